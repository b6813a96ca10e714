//! The fast path for `Pair` / `PairData` lists, the bulk of a call: their
//! names and values read straight from the segment's bytes.
//!
//! Cap'n Proto's generic reader checks every text pointer through several
//! layers (far pointers, segment lookup, bounds, read limit), which made
//! the list of 20 headers three quarters of a call's cost in the runner.
//! A message that the encoders here write is one segment whose lists hold
//! near pointers to byte lists: this reads exactly that, with every bound
//! checked, and gives up (`None`) on anything else, so that the generic
//! reader handles it and words its error. The results are the same either
//! way (`tests.rs` compares them).

/// `(name, value)` for each entry of `list` (`None` for a null value;
/// values converted by `value`, which gives `None` to refuse), or `None`
/// when the list is not in the simple form this reads, or a name is not
/// UTF-8, or `value` refused one: then read it with capnp's reader, which
/// says what is wrong.
///
/// `segment` is the message's only segment; `text_values` is true for
/// `Pair` (text values end in NUL, left out), false for `PairData`.
pub(super) fn pairs<'a, O: capnp::traits::OwnedStruct, V>(
    segment: &'a [u8],
    list: capnp::struct_list::Reader<'a, O>,
    text_values: bool,
    value: impl Fn(&'a [u8]) -> Option<V>,
) -> Option<Vec<(&'a str, Option<V>)>> {
    if list.is_empty() {
        return Some(Vec::new());
    }
    // Two pointers and no data per entry, as the schema's Pair is.
    if capnp::raw::get_list_step_size_in_bits(list) != 128
        || !capnp::raw::get_struct_data_section(list.get(0)).is_empty()
    {
        return None;
    }
    let entries = capnp::raw::get_list_bytes(list);
    // Where the entries are in the segment (addresses only compared, never
    // dereferenced): pointers are relative to their own position.
    let start = (entries.as_ptr() as usize).checked_sub(segment.as_ptr() as usize)?;
    if start % 8 != 0 || start.checked_add(entries.len())? > segment.len() {
        return None;
    }
    let mut out = Vec::with_capacity(list.len() as usize);
    // Bytes of names and values read: more than the segment means texts
    // that share bytes (a hostile message): capnp's read limit then applies.
    let mut budget = segment.len();
    for i in 0..list.len() as usize {
        let at = start + i * 16;
        let name = std::str::from_utf8(bytes_at(segment, at, true, &mut budget)??).ok()?;
        let value = match bytes_at(segment, at + 8, text_values, &mut budget)? {
            Some(bytes) => Some(value(bytes)?),
            None => None,
        };
        out.push((name, value));
    }
    Some(out)
}

/// The bytes a list pointer at byte `at` of `segment` points to: `Some(None)`
/// for a null pointer, `None` for anything but an in-bounds near pointer to
/// a byte list (and, when `text`, a non-empty one ending in NUL, which is
/// left out).
fn bytes_at<'a>(
    segment: &'a [u8],
    at: usize,
    text: bool,
    budget: &mut usize,
) -> Option<Option<&'a [u8]>> {
    let word = u64::from_le_bytes(segment.get(at..at + 8)?.try_into().ok()?);
    if word == 0 {
        return Some(None);
    }
    // Kind 1 (list) with element size 2 (bytes): anything else (far
    // pointers, other lists) goes to the generic reader.
    if word & 3 != 1 || (word >> 32) & 7 != 2 {
        return None;
    }
    let offset = i64::from((word as u32 as i32) >> 2);
    let count = (word >> 35) as usize;
    let target = i64::try_from(at / 8).ok()? + 1 + offset;
    let from = usize::try_from(target).ok()?.checked_mul(8)?;
    let bytes = segment.get(from..from.checked_add(count)?)?;
    *budget = budget.checked_sub(count)?;
    if text {
        match bytes.split_last() {
            Some((0, text)) => Some(Some(text)),
            _ => None,
        }
    } else {
        Some(Some(bytes))
    }
}

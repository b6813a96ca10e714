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

/// Entries read: names, and values (`None`: null).
type Pairs<'a, V> = Vec<(&'a str, Option<V>)>;

/// Entries' raw bytes: names, and values (`None`: null).
type RawPairs<'a> = Vec<(&'a [u8], Option<&'a [u8]>)>;

/// `(name, value)` for each entry of a `Pair` list (`None` for a null
/// value), or `None` when the list is not in the simple form this reads or
/// a text is not UTF-8: then read it with capnp's reader, which says what
/// is wrong.
///
/// The UTF-8 check runs once over the span that holds the list's texts
/// (the encoders write them one after the other), not once per text; a
/// text is then a slice of that checked span, which is UTF-8 on its own
/// exactly when it starts and ends on character boundaries. When the span
/// is not UTF-8 (bytes between the texts), each text is checked alone.
pub(super) fn text_pairs<'a, O: capnp::traits::OwnedStruct>(
    segment: &'a [u8],
    list: capnp::struct_list::Reader<'a, O>,
) -> Option<Pairs<'a, &'a str>> {
    let raw = raw_pairs(segment, list, true)?;
    let base = segment.as_ptr() as usize;
    let (mut lo, mut hi) = (segment.len(), 0);
    for text in raw.iter().flat_map(|(n, v)| std::iter::once(*n).chain(*v)) {
        let at = text.as_ptr() as usize - base;
        lo = lo.min(at);
        hi = hi.max(at + text.len());
    }
    let span = segment
        .get(lo..hi)
        .and_then(|s| std::str::from_utf8(s).ok());
    let text = |bytes: &'a [u8]| match span {
        Some(span) => {
            let at = bytes.as_ptr() as usize - base - lo;
            span.get(at..at + bytes.len())
        }
        None => std::str::from_utf8(bytes).ok(),
    };
    raw.into_iter()
        .map(|(name, value)| {
            let value = match value {
                Some(v) => Some(text(v)?),
                None => None,
            };
            Some((text(name)?, value))
        })
        .collect()
}

/// As [`text_pairs`], for a `PairData` list (values are bytes).
pub(super) fn data_pairs<'a, O: capnp::traits::OwnedStruct>(
    segment: &'a [u8],
    list: capnp::struct_list::Reader<'a, O>,
) -> Option<Pairs<'a, &'a [u8]>> {
    raw_pairs(segment, list, false)?
        .into_iter()
        .map(|(name, value)| Some((std::str::from_utf8(name).ok()?, value)))
        .collect()
}

/// The raw `(name, value)` bytes of each entry of `list` (names and text
/// values without their NUL; `None` for a null value), or `None` when the
/// list is not in the simple form this reads. `segment` is the message's
/// only segment; `text_values` is true for `Pair` (text values end in NUL),
/// false for `PairData`.
fn raw_pairs<'a, O: capnp::traits::OwnedStruct>(
    segment: &'a [u8],
    list: capnp::struct_list::Reader<'a, O>,
    text_values: bool,
) -> Option<RawPairs<'a>> {
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
        let name = bytes_at(segment, at, true, &mut budget)??;
        let value = bytes_at(segment, at + 8, text_values, &mut budget)?;
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

//! FlatBuffers payloads to the model, borrowing: texts and bytes are slices
//! of the frame. Each function reads its message whole, so that any
//! malformation is found before anything acts on it.

use super::generated::a6;
use crate::wire::ext_plugin_capnp as capnp_schema;
use crate::wire::message::decode::{
    answer_status, decode, ip_from_bytes, method_from_schema, Reason,
};
use crate::wire::{
    DecodeError, ErrorCode, ErrorResp, ExtraInfoAnswer, InfoKey, Needs, PrepareConf, Prepared,
    ReqCall, ReqCallAnswer, RequestOutcome, RequestParts, RespCall, RespCallAnswer,
    ResponseOutcome, ResponseParts, Rewrite, Stop,
};
use http::{Method, StatusCode};
use planus::ReadAsRoot;

impl From<planus::Error> for Reason {
    fn from(e: planus::Error) -> Self {
        Reason(e.to_string())
    }
}

/// A `[TextEntry]` list (absent: empty): `(name, value)` per entry, in
/// order, `None` for an entry without a value. An entry without a name is
/// refused as `"{item} {i} has no name"`.
type Entries<'a> = Vec<(&'a str, Option<&'a str>)>;

fn entries<'a>(
    list: Option<planus::Vector<'a, planus::Result<a6::TextEntryRef<'a>>>>,
    item: &str,
) -> Result<Entries<'a>, Reason> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    // planus checked when it made the vector that its entries fit in the
    // payload: this capacity is bounded by the frame's size.
    let mut out = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let entry = entry?;
        let name = entry
            .name()?
            .ok_or_else(|| format!("{item} {i} has no name"))?;
        out.push((name, entry.value()?));
    }
    Ok(out)
}

/// An owned copy of a list of response headers that APISIX sets one by
/// one (`core.response.set_header`): an entry without a value deletes
/// the name (`set_header(name, nil)`), so it drops the earlier entries of
/// that name (any case) and adds none.
fn owned_set(pairs: Entries<'_>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(pairs.len());
    for (name, value) in pairs {
        match value {
            Some(v) => out.push((name.to_owned(), v.to_owned())),
            None => out.retain(|(n, _)| !n.eq_ignore_ascii_case(name)),
        }
    }
    out
}

/// An owned copy of a list of changes (value set: set; none: delete).
fn owned_changes(pairs: Entries<'_>) -> Vec<(String, Option<String>)> {
    pairs
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v.map(str::to_owned)))
        .collect()
}

/// The HTTP method of an `A6.Method`: the Cap'n Proto schema's enum has
/// the same methods in the same order (GET = 0 to TRACE = 14), so both
/// wires share one mapping.
pub(super) fn method_from_a6(m: a6::Method) -> Method {
    let m = capnp_schema::Method::try_from(m as u16)
        .expect("A6.Method and the Cap'n Proto Method have the same 15 values");
    method_from_schema(m)
}

/// Reads an `A6.PrepareConf.Req` (type 1).
///
/// # Errors
/// A conf entry without a name or value, or a malformed message.
pub fn prepare_conf(bytes: &[u8]) -> Result<PrepareConf<'_>, DecodeError> {
    decode("A6.PrepareConf.Req", || {
        let root = a6::prepare_conf::ReqRef::read_as_root(bytes)?;
        let conf = entries(root.conf()?, "conf entry")?
            .into_iter()
            .enumerate()
            .map(|(i, (name, value))| {
                value
                    .map(|v| (name, v))
                    .ok_or_else(|| Reason(format!("conf entry {i} (`{name}`) has no value")))
            })
            .collect::<Result<_, _>>()?;
        Ok(PrepareConf {
            conf,
            key: root.key()?,
        })
    })
}

/// Reads an `A6.HTTPReqCall.Req` (type 2). APISIX sends no extra info up
/// front: `extra_info` is empty, and a chain reads what it needs with
/// EXTRA_INFO during the call.
///
/// # Errors
/// A `src_ip` that is not 4 or 16 bytes, a method outside `A6.Method`, a
/// missing path, an argument or header without a name, text that is not
/// UTF-8, or a malformed message.
pub fn req_call(bytes: &[u8]) -> Result<ReqCall<'_>, DecodeError> {
    decode("A6.HTTPReqCall.Req", || {
        let root = a6::http_req_call::ReqRef::read_as_root(bytes)?;
        let src_ip = root.src_ip()?.unwrap_or_default();
        let src_ip = ip_from_bytes(src_ip)
            .ok_or_else(|| format!("src_ip has {} bytes, expected 4 or 16", src_ip.len()))?;
        let method = root
            .method()
            .map_err(|e| format!("method is not in A6.Method: {e}"))?;
        let path = root.path()?.ok_or("path is missing")?;
        Ok(ReqCall {
            conf_token: root.conf_token()?,
            parts: RequestParts {
                id: root.id()?,
                src_ip,
                method: method_from_a6(method),
                path,
                args: entries(root.args()?, "argument")?,
                headers: entries(root.headers()?, "header")?
                    .into_iter()
                    .map(|(n, v)| (n, v.unwrap_or("")))
                    .collect(),
                extra_info: Vec::new(),
            },
        })
    })
}

/// Reads an `A6.HTTPRespCall.Req` (type 4): the upstream's status and
/// headers (APISIX sends no body: a chain asks for it with EXTRA_INFO).
///
/// # Errors
/// A status outside 100..=999, a header without a name, or a malformed
/// message.
pub fn resp_call(bytes: &[u8]) -> Result<RespCall<'_>, DecodeError> {
    decode("A6.HTTPRespCall.Req", || {
        let root = a6::http_resp_call::ReqRef::read_as_root(bytes)?;
        let status = root.status()?;
        let status = StatusCode::from_u16(status)
            .map_err(|_| format!("status {status} is not an HTTP status"))?;
        Ok(RespCall {
            conf_token: root.conf_token()?,
            parts: ResponseParts {
                id: root.id()?,
                status,
                headers: entries(root.headers()?, "header")?
                    .into_iter()
                    .map(|(n, v)| (n, v.unwrap_or("")))
                    .collect(),
                extra_info: Vec::new(),
            },
        })
    })
}

/// Reads an `A6.ExtraInfo.Req` (type 3, runner to gateway).
///
/// # Errors
/// No `info`, a `Var` without a name, or a malformed message.
pub fn extra_info_req(bytes: &[u8]) -> Result<InfoKey<'_>, DecodeError> {
    use a6::extra_info::InfoRef;
    decode("A6.ExtraInfo.Req", || {
        let root = a6::extra_info::ReqRef::read_as_root(bytes)?;
        Ok(match root.info()?.ok_or("info is missing")? {
            InfoRef::Var(var) => InfoKey::Var(var.name()?.ok_or("Var has no name")?),
            InfoRef::ReqBody(_) => InfoKey::RequestBody,
            InfoRef::RespBody(_) => InfoKey::ResponseBody,
        })
    })
}

/// Reads an `A6.ExtraInfo.Resp` (type 3, gateway to runner): `None` when
/// `result` is absent (APISIX has no such value).
///
/// # Errors
/// A malformed message.
pub fn extra_info_resp(bytes: &[u8]) -> Result<ExtraInfoAnswer<'_>, DecodeError> {
    decode("A6.ExtraInfo.Resp", || {
        let root = a6::extra_info::RespRef::read_as_root(bytes)?;
        Ok(ExtraInfoAnswer(root.result()?))
    })
}

/// Reads an `A6.Err.Resp` (type 0). The wire carries a code only: the
/// message is empty.
///
/// # Errors
/// A code outside `A6.Err.Code`, or a malformed message.
pub fn error(bytes: &[u8]) -> Result<ErrorResp, DecodeError> {
    use a6::err::Code;
    decode("A6.Err.Resp", || {
        let root = a6::err::RespRef::read_as_root(bytes)?;
        let code = match root.code()? {
            Code::BadRequest => ErrorCode::BadRequest,
            Code::ServiceUnavailable => ErrorCode::ServiceUnavailable,
            Code::ConfTokenNotFound => ErrorCode::ConfTokenNotFound,
        };
        Ok(ErrorResp {
            code,
            message: String::new(),
        })
    })
}

/// Reads an `A6.PrepareConf.Resp` (type 1): the token only (APISIX's
/// answer declares no needs).
///
/// # Errors
/// A token of 0, or a malformed message.
pub fn prepared(bytes: &[u8]) -> Result<Prepared, DecodeError> {
    decode("A6.PrepareConf.Resp", || {
        let root = a6::prepare_conf::RespRef::read_as_root(bytes)?;
        let token = root.conf_token()?;
        if token == 0 {
            return Err("conf_token is 0".into());
        }
        Ok(Prepared {
            token,
            needs: Needs::default(),
        })
    })
}

/// Reads an `A6.HTTPReqCall.Resp` (type 2). As APISIX reads it: no action,
/// or a rewrite that changes nothing, is *continue*; a stop status of 0
/// is 200.
///
/// # Errors
/// A stop status outside 200..=599 (other than 0), an entry without a
/// name, or a malformed message.
pub fn req_call_answer(bytes: &[u8]) -> Result<ReqCallAnswer, DecodeError> {
    use a6::http_req_call::ActionRef;
    decode("A6.HTTPReqCall.Resp", || {
        let root = a6::http_req_call::RespRef::read_as_root(bytes)?;
        let outcome = match root.action()? {
            None => RequestOutcome::Continue,
            Some(ActionRef::Stop(stop)) => {
                let status = answer_status(stop.status()?)
                    .map_err(|reason| format!("stop {reason}"))?
                    .unwrap_or(StatusCode::OK);
                let mut out = Stop::new(status);
                out.headers = owned_set(entries(stop.headers()?, "stop header")?);
                out.body = stop.body()?.unwrap_or_default().to_vec();
                RequestOutcome::Stop(out)
            }
            Some(ActionRef::Rewrite(rw)) => {
                let rewrite = Rewrite {
                    path: rw.path()?.map(str::to_owned),
                    headers: owned_changes(entries(rw.headers()?, "rewrite header")?),
                    args: owned_changes(entries(rw.args()?, "rewrite argument")?),
                    // A response header without a value adds nothing.
                    resp_headers: entries(rw.resp_headers()?, "resp_headers entry")?
                        .into_iter()
                        .filter_map(|(n, v)| v.map(|v| (n.to_owned(), v.to_owned())))
                        .collect(),
                    // APISIX applies a body only when it is not empty
                    // (`init.lua`): an empty one keeps the client's.
                    body: rw.body()?.filter(|b| !b.is_empty()).map(<[u8]>::to_vec),
                };
                if rewrite == Rewrite::default() {
                    RequestOutcome::Continue
                } else {
                    RequestOutcome::Rewrite(rewrite)
                }
            }
        };
        Ok(ReqCallAnswer {
            id: root.id()?,
            outcome,
        })
    })
}

/// Reads an `A6.HTTPRespCall.Resp` (type 4). As APISIX reads it: status 0
/// keeps the upstream's, an empty header list keeps the upstream's
/// headers, an empty body the upstream's body.
///
/// # Errors
/// A status outside 200..=599 (other than 0), a header without a name, or
/// a malformed message.
pub fn resp_call_answer(bytes: &[u8]) -> Result<RespCallAnswer, DecodeError> {
    decode("A6.HTTPRespCall.Resp", || {
        let root = a6::http_resp_call::RespRef::read_as_root(bytes)?;
        let status = answer_status(root.status()?)?;
        let listed = entries(root.headers()?, "header")?;
        // A non-empty list replaces the upstream's headers, even when its
        // entries without a value deleted every name in it.
        let replaces = !listed.is_empty();
        let headers = owned_set(listed);
        let body = root.body()?.unwrap_or_default();
        Ok(RespCallAnswer {
            id: root.id()?,
            outcome: ResponseOutcome {
                status,
                headers: replaces.then_some(headers),
                body: (!body.is_empty()).then(|| body.to_vec()),
            },
        })
    })
}

"""A client of APISIX's wire that shares no code with extplug: APISIX's own
generated FlatBuffers classes (the `a6pluginprotos` package of its Python
runner) and Google's `flatbuffers` package, over a plain unix socket.

Started by tests/apisix_wire.rs with the socket of a running demo-runner:

    python3 a6_client.py SOCKET CAPNP_TOKEN

CAPNP_TOKEN is a `say` chain that the Rust test prepared over Cap'n Proto
on a connection it keeps open: calling it here shows that tokens belong to
the runner, whatever wire prepared them.

It plays APISIX's part (init.lua): prepare conf, calls, answers to the
runner's EXTRA_INFO requests, and checks each answer as APISIX would read
it. It prints one line per case and `N passed, N failed`; the exit status
is 0 only when every case passed.

Messages a6pluginprotos 0.2.1 predates (the response call, `RespBody`, a
rewrite's `resp_headers` and `body`) are built and read with the
`flatbuffers` package's table API, by their slots in ext-plugin.fbs.
"""

import socket
import struct
import sys
import traceback

import flatbuffers
from flatbuffers.table import Table

import A6.Err.Resp as ErrResp
import A6.ExtraInfo.Info as Info
import A6.ExtraInfo.Req as ExtraReq
import A6.ExtraInfo.Resp as ExtraResp
import A6.ExtraInfo.Var as ExtraVar
import A6.HTTPReqCall.Action as Action
import A6.HTTPReqCall.Req as CallReq
import A6.HTTPReqCall.Resp as CallResp
import A6.HTTPReqCall.Rewrite as Rewrite
import A6.HTTPReqCall.Stop as Stop
import A6.Method as Method
import A6.PrepareConf.Req as PrepReq
import A6.PrepareConf.Resp as PrepResp
import A6.TextEntry as TextEntry

ERROR, PREPARE_CONF, HTTP_REQ_CALL, EXTRA_INFO, HTTP_RESP_CALL = 0, 1, 2, 3, 4
BAD_REQUEST, SERVICE_UNAVAILABLE, CONF_TOKEN_NOT_FOUND = 0, 1, 2
INFO_RESP_BODY = 3  # A6.ExtraInfo.Info.RespBody, newer than a6pluginprotos 0.2.1

SOCKET = sys.argv[1]
CAPNP_TOKEN = int(sys.argv[2])


class Conn:
    """One connection, framed as APISIX frames: type byte, 3-byte big-endian length."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(SOCKET)

    def send(self, ty, payload):
        self.sock.sendall(bytes([ty]) + struct.pack(">I", len(payload))[1:] + payload)

    def _exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def receive(self):
        """(type, payload), or None when the runner closed the connection."""
        hdr = self._exact(4)
        if hdr is None:
            return None
        ty = hdr[0]
        length = struct.unpack(">I", b"\0" + hdr[1:])[0]
        payload = self._exact(length) if length else b""
        assert payload is not None, "connection closed in the middle of a frame"
        return ty, payload

    def close(self):
        self.sock.close()


def text_entries(b, pairs, start_vector):
    """A [TextEntry] vector; a pair whose value is None has no value."""
    offsets = []
    for name, value in pairs:
        n = b.CreateString(name)
        v = b.CreateString(value) if value is not None else None
        TextEntry.Start(b)
        TextEntry.AddName(b, n)
        if v is not None:
            TextEntry.AddValue(b, v)
        offsets.append(TextEntry.End(b))
    start_vector(b, len(offsets))
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def prepare_payload(conf, key=None):
    b = flatbuffers.Builder(0)
    k = b.CreateString(key) if key is not None else None
    vec = text_entries(b, conf, PrepReq.StartConfVector)
    PrepReq.Start(b)
    PrepReq.AddConf(b, vec)
    if k is not None:
        PrepReq.AddKey(b, k)
    b.Finish(PrepReq.End(b))
    return bytes(b.Output())


def call_payload(token, call_id=7, path="/x", method=Method.Method.GET,
                 src_ip=bytes([10, 0, 0, 1]), args=(), headers=(("host", "example.com"),)):
    b = flatbuffers.Builder(0)
    p = b.CreateString(path)
    ip = b.CreateByteVector(src_ip)
    a = text_entries(b, args, CallReq.StartArgsVector)
    h = text_entries(b, headers, CallReq.StartHeadersVector)
    CallReq.Start(b)
    CallReq.AddId(b, call_id)
    CallReq.AddConfToken(b, token)
    CallReq.AddSrcIp(b, ip)
    CallReq.AddPath(b, p)
    CallReq.AddArgs(b, a)
    CallReq.AddHeaders(b, h)
    CallReq.AddMethod(b, method)
    b.Finish(CallReq.End(b))
    return bytes(b.Output())


def resp_call_payload(token, call_id, status, headers):
    """An A6.HTTPRespCall.Req: id (slot 0), status (1), headers (2), conf_token (3)."""
    b = flatbuffers.Builder(0)
    h = text_entries(b, headers, lambda b, n: b.StartVector(4, n, 4))
    b.StartObject(4)
    b.PrependUint32Slot(0, call_id, 0)
    b.PrependUint16Slot(1, status, 0)
    b.PrependUOffsetTRelativeSlot(2, h, 0)
    b.PrependUint32Slot(3, token, 0)
    b.Finish(b.EndObject())
    return bytes(b.Output())


def extra_info_answer(value):
    b = flatbuffers.Builder(0)
    v = b.CreateByteVector(value) if value is not None else None
    ExtraResp.Start(b)
    if v is not None:
        ExtraResp.AddResult(b, v)
    b.Finish(ExtraResp.End(b))
    return bytes(b.Output())


def entries_of(getter, length):
    out = []
    for i in range(length):
        e = getter(i)
        v = e.Value()
        out.append((e.Name().decode(), v.decode() if v is not None else None))
    return out


def raw_entries(tab, slot_offset):
    """A [TextEntry] field read through the table API (for slots 0.2.1 lacks)."""
    o = tab.Offset(slot_offset)
    if o == 0:
        return None
    out = []
    vec = tab.Vector(o)
    for i in range(tab.VectorLen(o)):
        entry = TextEntry.TextEntry()
        entry.Init(tab.Bytes, tab.Indirect(vec + 4 * i))
        v = entry.Value()
        out.append((entry.Name().decode(), v.decode() if v is not None else None))
    return out


def raw_bytes(tab, slot_offset):
    o = tab.Offset(slot_offset)
    if o == 0:
        return None
    start = tab.Vector(o)
    return bytes(tab.Bytes[start:start + tab.VectorLen(o)])


def prepare(conn, conf, key=None):
    conn.send(PREPARE_CONF, prepare_payload(conf, key))
    ty, payload = conn.receive()
    if ty == ERROR:
        return ("error", ErrResp.Resp.GetRootAsResp(payload, 0).Code())
    assert ty == PREPARE_CONF, ty
    token = PrepResp.Resp.GetRootAsResp(payload, 0).ConfToken()
    assert token != 0
    return ("token", token)


def token_of(conn, conf, key=None):
    kind, value = prepare(conn, conf, key)
    assert kind == "token", (kind, value)
    return value


def serve_extra_info(conn, answers, asked):
    """Reads frames, answering EXTRA_INFO from `answers` as init.lua does
    (Var by name; ReqBody; RespBody), until the call's answer; records what
    the runner asked in `asked`."""
    while True:
        frame = conn.receive()
        assert frame is not None, "the runner closed the connection"
        ty, payload = frame
        if ty != EXTRA_INFO:
            return ty, payload
        req = ExtraReq.Req.GetRootAsReq(payload, 0)
        kind = req.InfoType()
        if kind == Info.Info.Var:
            var = ExtraVar.Var()
            t = req.Info()
            var.Init(t.Bytes, t.Pos)
            key = "var:" + var.Name().decode()
        elif kind == Info.Info.ReqBody:
            key = "req_body"
        elif kind == INFO_RESP_BODY:
            key = "resp_body"
        else:
            raise AssertionError(f"unknown info type {kind}")
        asked.append(key)
        conn.send(EXTRA_INFO, extra_info_answer(answers.get(key)))


def call(conn, token, answers=None, asked=None, **kw):
    conn.send(HTTP_REQ_CALL, call_payload(token, **kw))
    return serve_extra_info(conn, answers or {}, asked if asked is not None else [])


def req_answer(ty, payload):
    assert ty == HTTP_REQ_CALL, f"expected a call answer, got type {ty}"
    return CallResp.Resp.GetRootAsResp(payload, 0)


def stop_of(resp):
    assert resp.ActionType() == Action.Action.Stop, resp.ActionType()
    stop = Stop.Stop()
    t = resp.Action()
    stop.Init(t.Bytes, t.Pos)
    return stop


def rewrite_of(resp):
    assert resp.ActionType() == Action.Action.Rewrite, resp.ActionType()
    rw = Rewrite.Rewrite()
    t = resp.Action()
    rw.Init(t.Bytes, t.Pos)
    return rw


def error_code(ty, payload):
    assert ty == ERROR, f"expected an error, got type {ty}"
    return ErrResp.Resp.GetRootAsResp(payload, 0).Code()


SAY = '{"body":"hi","status":201,"headers":{"x-a":"1"}}'

CASES = []


def case(f):
    CASES.append(f)
    return f


@case
def prepare_conf_gives_a_token_and_the_same_key_the_same_token():
    c = Conn()
    a = token_of(c, [("say", SAY)], key="route-1#req")
    b = token_of(c, [("say", SAY)], key="route-1#req")
    other = token_of(c, [("say", SAY)])
    assert a == b and a != other, (a, b, other)


@case
def stop_carries_status_headers_body_and_the_id():
    c = Conn()
    token = token_of(c, [("say", SAY)])
    resp = req_answer(*call(c, token, call_id=4242))
    assert resp.Id() == 4242
    stop = stop_of(resp)
    assert stop.Status() == 201
    assert entries_of(stop.Headers, stop.HeadersLength()) == [("x-a", "1")]
    assert bytes(stop.Body(i) for i in range(stop.BodyLength())) == b"hi"


@case
def rewrite_sets_deletes_and_adds_response_headers():
    c = Conn()
    conf = ('{"path":"/v2","headers":{"x-a":"1","cookie":null},'
            '"args":{"a":"9","gone":null},"resp_headers":{"x-via":"extplug"}}')
    token = token_of(c, [("rewrite", conf)])
    resp = req_answer(*call(c, token, args=(("a", "1"), ("flag", None), ("gone", "x"))))
    rw = rewrite_of(resp)
    assert rw.Path() == b"/v2", rw.Path()
    headers = entries_of(rw.Headers, rw.HeadersLength())
    assert ("x-a", "1") in headers and ("cookie", None) in headers, headers
    args = entries_of(rw.Args, rw.ArgsLength())
    assert ("a", "9") in args and ("gone", None) in args, args
    # resp_headers (slot 3, vtable offset 10) and body (slot 4, offset 12).
    assert raw_entries(rw._tab, 10) == [("x-via", "extplug")], raw_entries(rw._tab, 10)
    assert raw_bytes(rw._tab, 12) is None, "the body is kept"


@case
def a_chain_that_changes_nothing_answers_without_an_action():
    c = Conn()
    token = token_of(c, [("inject-vars", '{"vars":["nope"]}')])
    asked = []
    resp = req_answer(*call(c, token, asked=asked))
    assert resp.ActionType() == Action.Action.NONE, resp.ActionType()
    assert asked == ["var:nope"], asked


@case
def a_declared_var_is_asked_with_extra_info_during_the_call():
    c = Conn()
    token = token_of(c, [("inject-vars", '{"vars":["remote_addr"]}')])
    asked = []
    resp = req_answer(*call(c, token, answers={"var:remote_addr": b"10.0.0.1"}, asked=asked))
    assert asked == ["var:remote_addr"], asked
    rw = rewrite_of(resp)
    assert entries_of(rw.Headers, rw.HeadersLength()) == [("x-var-remote_addr", "10.0.0.1")]


@case
def the_request_body_is_asked_with_extra_info():
    c = Conn()
    token = token_of(c, [("body-size", "{}")])
    asked = []
    resp = req_answer(*call(c, token, answers={"req_body": b"hello"}, asked=asked,
                            method=Method.Method.POST))
    assert asked == ["req_body"], asked
    rw = rewrite_of(resp)
    assert entries_of(rw.Headers, rw.HeadersLength()) == [("x-body-size", "5")]


@case
def the_response_phase_asks_the_body_and_its_header_list_replaces():
    c = Conn()
    token = token_of(c, [("body-size", "{}"), ("response-headers", '{"status":202}')])
    asked = []
    c.send(HTTP_RESP_CALL, resp_call_payload(token, 9, 200, [("server", "up"), ("x-b", "2")]))
    ty, payload = serve_extra_info(c, {"resp_body": b"abc"}, asked)
    assert ty == HTTP_RESP_CALL, ty
    assert asked == ["resp_body"], asked
    tab = Table(bytearray(payload), 0)
    tab.Pos = struct.unpack("<I", payload[:4])[0]
    assert tab.Get(flatbuffers.number_types.Uint32Flags, tab.Pos + tab.Offset(4)) == 9
    assert tab.Get(flatbuffers.number_types.Uint16Flags, tab.Pos + tab.Offset(6)) == 202
    headers = raw_entries(tab, 8)
    assert headers == [("server", "up"), ("x-b", "2"), ("x-body-size", "3")], headers
    assert raw_bytes(tab, 10) is None, "the body is kept"


@case
def an_unknown_token_is_conf_token_not_found():
    c = Conn()
    token = token_of(c, [("say", SAY)])
    assert error_code(*call(c, token + 1000)) == CONF_TOKEN_NOT_FOUND
    # The connection is still in step: APISIX would close it, but the
    # runner need not.
    stop_of(req_answer(*call(c, token)))


@case
def an_unknown_plugin_is_bad_request():
    c = Conn()
    assert prepare(c, [("no-such-plugin", "{}")]) == ("error", BAD_REQUEST)
    assert prepare(c, [("say", '{"status":"x"}')]) == ("error", BAD_REQUEST)


@case
def a_malformed_message_closes_that_connection_only():
    keep = Conn()
    token = token_of(keep, [("say", SAY)])
    for ty, junk in [(HTTP_REQ_CALL, b"\x10\x00\x00\x00garbage!"),
                     (HTTP_REQ_CALL, b"\xff\xff\xff\x7f" + b"\x00" * 12),
                     (PREPARE_CONF, b"\x04\x00\x00\x00"),
                     (9, b"\x0c\x00\x00\x00junkjunk")]:
        bad = Conn()
        token_of(bad, [("say", SAY)])  # the connection speaks APISIX's wire
        bad.send(ty, junk)
        frame = bad.receive()
        assert frame is not None and error_code(*frame) == BAD_REQUEST, frame
        assert bad.receive() is None, "the runner keeps a connection after a malformed message"
        bad.close()
    # The other connection, and new ones, are served.
    stop_of(req_answer(*call(keep, token)))
    stop_of(req_answer(*call(Conn(), token)))


@case
def a_token_prepared_over_capnp_serves_an_apisix_call():
    c = Conn()
    stop = stop_of(req_answer(*call(c, CAPNP_TOKEN)))
    assert bytes(stop.Body(i) for i in range(stop.BodyLength())) == b"capnp"


@case
def tokens_belong_to_the_runner_not_the_connection():
    token = token_of(Conn(), [("say", SAY)])
    stop_of(req_answer(*call(Conn(), token)))


@case
def many_calls_on_one_connection():
    c = Conn()
    say = token_of(c, [("say", SAY)])
    var = token_of(c, [("inject-vars", '{"vars":["remote_addr"]}')])
    for i in range(300):
        if i % 2:
            resp = req_answer(*call(c, say, call_id=i))
            stop_of(resp)
        else:
            resp = req_answer(*call(c, var, call_id=i, answers={"var:remote_addr": b"v%d" % i}))
            rw = rewrite_of(resp)
            assert entries_of(rw.Headers, rw.HeadersLength()) == [("x-var-remote_addr", "v%d" % i)]
        assert resp.Id() == i


@case
def ipv6_sources_and_every_method_are_read():
    c = Conn()
    token = token_of(c, [("say", SAY)])
    for m in range(15):  # GET=0 .. TRACE=14
        stop_of(req_answer(*call(c, token, method=m, src_ip=bytes(range(16)))))
    c.send(HTTP_REQ_CALL, call_payload(token, method=15))
    assert error_code(*c.receive()) == BAD_REQUEST
    d = Conn()
    d.send(HTTP_REQ_CALL, call_payload(token, src_ip=b"\x01\x02\x03"))
    assert error_code(*d.receive()) == BAD_REQUEST


def main():
    passed = failed = 0
    for f in CASES:
        try:
            f()
            print(f"ok     {f.__name__}")
            passed += 1
        except Exception:  # noqa: BLE001 - report every case
            print(f"FAILED {f.__name__}")
            traceback.print_exc(file=sys.stdout)
            failed += 1
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

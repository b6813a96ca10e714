# The extplug wire protocol, version 1: the Cap'n Proto payloads carried in
# each frame (1-byte type, 24-bit big-endian length, payload).
# Names and field ordinals are normative: see ../../shared/PROTOCOL.md and
# schema/README.md for the choices made where the protocol is silent.
@0xe14ed68fe83fe9d7;

# A name and a text value. `value` left null means "no value" (an argument
# without `=`), or in a rewrite "delete this name".
struct Pair {
  name @0 :Text;
  value @1 :Text;
}

# A name and binary value. `value` left null means "not available".
struct PairData {
  name @0 :Text;
  value @1 :Data;
}

enum ErrorCode {
  badRequest @0;
  serviceUnavailable @1;
  confTokenNotFound @2;
}

# Frame type 0, sent by the runner only.
struct ErrorResp {
  code @0 :ErrorCode;
  message @1 :Text;
}

# Frame type 1.
struct PrepareConfReq {
  conf @0 :List(Pair);
  key @1 :Text;
}

struct PrepareConfResp {
  confToken @0 :UInt32;
  vars @1 :List(Text);
  reqBody @2 :Bool;
  respBody @3 :Bool;
}

enum Method {
  get @0;
  head @1;
  post @2;
  put @3;
  delete @4;
  mkcol @5;
  copy @6;
  move @7;
  options @8;
  propfind @9;
  proppatch @10;
  lock @11;
  unlock @12;
  patch @13;
  trace @14;
}

# Frame type 2.
struct HttpReqCallReq {
  id @0 :UInt32;
  srcIp @1 :Data;
  method @2 :Method;
  path @3 :Text;
  args @4 :List(Pair);
  headers @5 :List(Pair);
  confToken @6 :UInt32;
  extraInfo @7 :List(PairData);
}

struct HttpReqCallResp {
  id @0 :UInt32;
  action :union {
    continue @1 :Void;
    stop @2 :Stop;
    rewrite @3 :Rewrite;
  }

  struct Stop {
    status @0 :UInt16;
    headers @1 :List(Pair);
    body @2 :Data;
  }

  struct Rewrite {
    path @0 :Text;
    headers @1 :List(Pair);
    args @2 :List(Pair);
    respHeaders @3 :List(Pair);
    body @4 :Data;
  }
}

# Frame type 3, sent by the runner during a type 2 or 4 call.
struct ExtraInfoReq {
  info :union {
    var @0 :Text;
    reqBody @1 :Void;
    respBody @2 :Void;
  }
}

struct ExtraInfoResp {
  result @0 :Data;
}

# Frame type 4.
struct HttpRespCallReq {
  id @0 :UInt32;
  status @1 :UInt16;
  headers @2 :List(Pair);
  confToken @3 :UInt32;
  extraInfo @4 :List(PairData);
}

struct HttpRespCallResp {
  id @0 :UInt32;
  status @1 :UInt16;
  headers @2 :List(Pair);
  body @3 :Data;
}

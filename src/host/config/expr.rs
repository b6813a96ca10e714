//! A route's `vars`: APISIX's lua-resty-expr expressions, compiled once
//! when the route is loaded and evaluated over a request's variables.
//!
//! The form: a list of expressions, all of which must hold
//! (`[["arg_name", "==", "json"], ["http_x_a", "~~", "^a.*"]]`), or a group
//! whose first element is `"AND"`, `"OR"`, `"!AND"` or `"!OR"` followed by
//! two or more expressions or groups, nested at will. An expression is
//! `[var, op, value]`, or `[var, "!", op, value]` for its negation. The
//! operators and their edge cases are lua-resty-expr's (`lib/resty/expr/v1.lua`):
//!
//! - `==`: with a number, the variable read as a number (Lua's `tonumber`;
//!   not a number: false); with a string, equal text; with `null`, true when
//!   the variable is missing; with `true`, `false`, a list or an object:
//!   never.
//! - `~=`: the negation of `==` in every case above, so a missing variable
//!   is `~=` any string or number.
//! - `>`, `>=`, `<`, `<=`: both sides as numbers; either not a number
//!   (a missing variable included): false.
//! - `~~`, `~*`: a regex search anywhere in the value (`~*` ignoring case);
//!   a missing variable: false.
//! - `in`: the value is one of the list's strings (a number in the list
//!   never equals a variable's text, as in Lua); not a list: false.
//! - `has`: the variable is a list holding the value; every variable here
//!   is a single value, so `has` is always false (as lua-resty-expr gives
//!   for a single value).
//! - `ipmatch`: the variable is an IP address within one of the addresses
//!   or CIDRs (a string or a list); missing or not an address: false.
//! - `[var, "value"]`: lua-resty-expr's old form, `==` with the value
//!   lower-cased (Lua lowers the operator it then takes as the value).
//!
//! Regexes are Rust's `regex` syntax, not PCRE: no look-around and no
//! back-references (refused at load, naming the route's field); matching is
//! linear in the value's length whatever the pattern.

use ipnet::IpNet;
use regex::{Regex, RegexBuilder};
use serde_json::Value;
use std::net::IpAddr;

/// A compiled `vars`.
#[derive(Debug, Clone)]
pub struct VarsExpr {
    /// `None` for `[]`: always true.
    root: Option<Group>,
}

#[derive(Debug, Clone)]
struct Group {
    logic: Logic,
    negate: bool,
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Logic {
    And,
    Or,
}

#[derive(Debug, Clone)]
enum Node {
    Group(Group),
    Cmp(Cmp),
}

#[derive(Debug, Clone)]
struct Cmp {
    var: String,
    negate: bool,
    op: Op,
}

/// The right-hand value of `==`/`~=`, as Lua compares it.
#[derive(Debug, Clone)]
enum Operand {
    Text(String),
    Number(f64),
    /// JSON `null`: equal to a missing variable.
    Null,
    /// A boolean, list or object: never equal to a variable's text.
    Other,
}

#[derive(Debug, Clone)]
enum Op {
    Eq(Operand),
    Ne(Operand),
    /// `>`, `>=`, `<`, `<=` with the right side as a number (`None`: not a
    /// number, never true).
    Num(NumOp, Option<f64>),
    /// `~~` and `~*` (compiled case-insensitive).
    Regex(Regex),
    In(Vec<String>),
    Has,
    IpMatch(Vec<IpNet>),
}

#[derive(Debug, Clone, Copy)]
enum NumOp {
    Gt,
    Ge,
    Lt,
    Le,
}

/// Bytes a compiled regex may take: a hostile pattern (from etcd) is
/// refused rather than allowed the `regex` crate's default of 10 MiB.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl VarsExpr {
    /// Compiles `vars` as lua-resty-expr's `expr.new` does.
    ///
    /// # Errors
    /// What is wrong and where, as a JSON path below `vars`
    /// (`vars[1][2]: invalid operator "=~"`).
    pub fn compile(vars: &Value) -> Result<VarsExpr, String> {
        let Value::Array(rules) = vars else {
            return Err(
                "`vars` must be a list of expressions, as [[\"arg_name\", \"==\", \"json\"]]"
                    .into(),
            );
        };
        if rules.is_empty() {
            return Ok(VarsExpr { root: None });
        }
        if !rules[0].is_array() && logic_of(&rules[0]).is_none() {
            return Err(
                "`vars`: each expression is wrapped in its own list: [[\"arg_name\", \"==\", \"json\"]], not [\"arg_name\", \"==\", \"json\"]"
                    .into(),
            );
        }
        let root = match compile(rules, "vars")? {
            Node::Group(g) => g,
            Node::Cmp(_) => unreachable!("a top-level list is a group"),
        };
        Ok(VarsExpr { root: Some(root) })
    }

    /// Whether the request's variables (`lookup` gives each by name, when
    /// the expression reads it) satisfy the expression.
    pub fn eval<F, S>(&self, lookup: &mut F) -> bool
    where
        F: FnMut(&str) -> Option<S>,
        S: AsRef<str>,
    {
        match &self.root {
            None => true,
            Some(g) => g.eval(lookup),
        }
    }
}

/// `"AND"`, `"!OR"`, ... (any case) as a group's logic and negation.
fn logic_of(v: &Value) -> Option<(Logic, bool)> {
    let text = v.as_str()?.to_ascii_uppercase();
    match text.as_str() {
        "AND" => Some((Logic::And, false)),
        "OR" => Some((Logic::Or, false)),
        "!AND" => Some((Logic::And, true)),
        "!OR" => Some((Logic::Or, true)),
        _ => None,
    }
}

/// lua-resty-expr's `compile`: a list of rules (AND), a logic group, or
/// one expression.
fn compile(rules: &[Value], at: &str) -> Result<Node, String> {
    if rules.is_empty() {
        return Err(format!("`{at}` is empty (rule too short)"));
    }
    let sub = |v: &Value, i: usize| -> Result<Node, String> {
        let at = format!("{at}[{i}]");
        match v {
            Value::Array(list) => compile(list, &at),
            other => Err(format!(
                "`{at}` is {other}: an expression or a group is a list"
            )),
        }
    };
    if rules[0].is_array() {
        let nodes = rules
            .iter()
            .enumerate()
            .map(|(i, v)| sub(v, i))
            .collect::<Result<_, _>>()?;
        return Ok(Node::Group(Group {
            logic: Logic::And,
            negate: false,
            nodes,
        }));
    }
    if let Some((logic, negate)) = logic_of(&rules[0]) {
        if rules.len() <= 2 {
            return Err(format!(
                "`{at}`: {} needs two or more expressions (rule too short)",
                rules[0]
            ));
        }
        let nodes = rules
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, v)| sub(v, i))
            .collect::<Result<_, _>>()?;
        return Ok(Node::Group(Group {
            logic,
            negate,
            nodes,
        }));
    }
    compile_cmp(rules, at).map(Node::Cmp)
}

/// lua-resty-expr's `compile_expr`: `[var, op, value]` or
/// `[var, "!", op, value]`.
fn compile_cmp(expr: &[Value], at: &str) -> Result<Cmp, String> {
    let (negate, op, value) = if expr.len() == 4 {
        if expr[1].as_str() != Some("!") {
            return Err(format!(
                "`{at}`: an expression of four elements is [var, \"!\", op, value] (bad 'not' expression)"
            ));
        }
        (true, expr.get(2), expr.get(3))
    } else {
        (false, expr.get(1), expr.get(2))
    };
    let Some(Value::String(var)) = expr.first() else {
        return Err(format!(
            "`{at}[0]`: the variable's name is a string (invalid expression)"
        ));
    };
    // A name extplug has no value for would read as missing, so that
    // `["post_arg_user", "~=", "root"]` always held: refused instead.
    if !super::var_names::computed(var) {
        return Err(format!(
            "`{at}[0]`: {var:?} is not a variable extplug computes (one of {})",
            super::var_names::listed()
        ));
    }
    let op_text = match op {
        None => return Err(format!("`{at}`: no operator (invalid expression)")),
        Some(Value::String(s)) => s.to_lowercase(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(format!(
                "`{at}`: the operator {other} is not a string (invalid expression)"
            ))
        }
    };
    let known = is_operator(&op_text);
    // The old two-element form: the lowered "operator" is the value of `==`.
    let (op_text, value) = match value {
        None if !known => ("==".to_owned(), Value::String(op_text)),
        None => (op_text, Value::Null),
        Some(v) if known => (op_text, v.clone()),
        Some(_) => {
            return Err(format!(
            "`{at}`: invalid operator {op_text:?} (==, ~=, >, >=, <, <=, ~~, ~*, in, has, ipmatch)"
        ))
        }
    };
    let op = match op_text.as_str() {
        "==" => Op::Eq(operand(&value)),
        "~=" => Op::Ne(operand(&value)),
        ">" => Op::Num(NumOp::Gt, number(&value)),
        ">=" => Op::Num(NumOp::Ge, number(&value)),
        "<" => Op::Num(NumOp::Lt, number(&value)),
        "<=" => Op::Num(NumOp::Le, number(&value)),
        "~~" | "~*" => {
            let Value::String(pattern) = &value else {
                return Err(format!(
                    "`{at}`: {op_text} needs a regex string, not {value}"
                ));
            };
            let re = RegexBuilder::new(pattern)
                .case_insensitive(op_text == "~*")
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| {
                    format!("`{at}`: the regex {pattern:?} does not compile (Rust regex syntax: no look-around, no back-references): {e}")
                })?;
            Op::Regex(re)
        }
        "in" => Op::In(match &value {
            Value::Array(list) => list
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }),
        "has" => Op::Has,
        "ipmatch" => Op::IpMatch(ip_list(&value).map_err(|e| format!("`{at}`: ipmatch: {e}"))?),
        _ => unreachable!("checked by is_operator"),
    };
    Ok(Cmp {
        var: var.clone(),
        negate,
        op,
    })
}

fn is_operator(op: &str) -> bool {
    matches!(
        op,
        "==" | "~=" | ">" | ">=" | "<" | "<=" | "~~" | "~*" | "in" | "has" | "ipmatch"
    )
}

fn operand(v: &Value) -> Operand {
    match v {
        Value::String(s) => Operand::Text(s.clone()),
        Value::Number(n) => n.as_f64().map_or(Operand::Other, Operand::Number),
        Value::Null => Operand::Null,
        _ => Operand::Other,
    }
}

/// A JSON value as Lua's `tonumber` reads it.
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => lua_tonumber(s),
        _ => None,
    }
}

/// Lua's `tonumber` of a string: decimal (with fraction and exponent) or
/// `0x` hexadecimal, surrounded by optional white space; `inf` and `nan`
/// are not numbers.
pub(crate) fn lua_tonumber(text: &str) -> Option<f64> {
    let t = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let value = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        hex.bytes().fold(0f64, |acc, b| {
            acc * 16.0 + f64::from((b as char).to_digit(16).unwrap_or(0))
        })
    } else {
        let ok = !digits.is_empty()
            && digits.bytes().any(|b| b.is_ascii_digit())
            && digits
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
            && !digits.starts_with(['e', 'E', '+', '-']);
        if !ok {
            return None;
        }
        digits.parse::<f64>().ok()?
    };
    Some(if negative { -value } else { value })
}

/// `ipmatch`'s right side: an address or CIDR, or a list of them.
fn ip_list(v: &Value) -> Result<Vec<IpNet>, String> {
    let texts: Vec<&Value> = match v {
        Value::Array(list) => list.iter().collect(),
        other => vec![other],
    };
    if texts.is_empty() {
        return Err("an empty list (invalid ip address)".into());
    }
    texts
        .into_iter()
        .map(|t| match t {
            Value::String(s) => parse_ip_or_cidr(s),
            other => Err(format!("{other} is not an address (invalid ip address)")),
        })
        .collect()
}

/// An address (`10.0.0.1`, `::1`, `[::1]`) or a CIDR (`10.0.0.0/8`,
/// `fe80::/10`), as APISIX's ipmatcher takes them; an IPv4-mapped IPv6
/// address is its IPv4 one, and so is an IPv4-mapped CIDR of 96 bits or
/// more (`::ffff:10.0.0.0/104` is `10.0.0.0/8`): the client's address is
/// made IPv4 the same way before it is matched.
pub fn parse_ip_or_cidr(text: &str) -> Result<IpNet, String> {
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    if bare.contains('/') {
        let net = bare
            .parse::<IpNet>()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR (invalid ip address)"))?;
        return Ok(match net {
            IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
                Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                    .map(IpNet::V4)
                    .unwrap_or(net),
                None => net,
            },
            _ => net,
        });
    }
    match bare.parse::<IpAddr>() {
        Ok(ip) => Ok(IpNet::from(ip.to_canonical())),
        Err(_) => Err(format!(
            "{text:?} is not an IP address or CIDR (invalid ip address)"
        )),
    }
}

/// Whether `ip` is within one of `nets` (an IPv4-mapped IPv6 address is
/// matched as its IPv4 one).
pub fn ip_within(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

impl Group {
    fn eval<F, S>(&self, lookup: &mut F) -> bool
    where
        F: FnMut(&str) -> Option<S>,
        S: AsRef<str>,
    {
        let mut each = self.nodes.iter().map(|node| match node {
            Node::Group(g) => g.eval(lookup),
            Node::Cmp(c) => c.eval(lookup),
        });
        let result = match self.logic {
            Logic::And => each.all(|ok| ok),
            Logic::Or => each.any(|ok| ok),
        };
        result != self.negate
    }
}

impl Cmp {
    fn eval<F, S>(&self, lookup: &mut F) -> bool
    where
        F: FnMut(&str) -> Option<S>,
        S: AsRef<str>,
    {
        // `has` reads nothing: no variable here is a list.
        if matches!(self.op, Op::Has) {
            return self.negate;
        }
        let value = lookup(&self.var);
        let value = value.as_ref().map(AsRef::as_ref);
        let result = match &self.op {
            Op::Eq(r) => equals(value, r),
            Op::Ne(r) => !equals(value, r),
            Op::Num(op, r) => match (value.and_then(lua_tonumber), r) {
                (Some(l), Some(r)) => match op {
                    NumOp::Gt => l > *r,
                    NumOp::Ge => l >= *r,
                    NumOp::Lt => l < *r,
                    NumOp::Le => l <= *r,
                },
                _ => false,
            },
            Op::Regex(re) => value.is_some_and(|v| re.is_match(v)),
            Op::In(list) => value.is_some_and(|v| list.iter().any(|x| x == v)),
            Op::Has => false,
            Op::IpMatch(nets) => value
                .and_then(|v| v.parse::<IpAddr>().ok())
                .is_some_and(|ip| ip_within(nets, ip)),
        };
        result != self.negate
    }
}

/// Lua's `l_v == r_v` after lua-resty-expr's number conversion.
fn equals(value: Option<&str>, r: &Operand) -> bool {
    match r {
        Operand::Text(t) => value == Some(t.as_str()),
        Operand::Number(n) => value.and_then(lua_tonumber) == Some(*n),
        Operand::Null => value.is_none(),
        Operand::Other => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn eval(vars: &str, pairs: &[(&str, &str)]) -> bool {
        let expr = VarsExpr::compile(&serde_json::from_str(vars).unwrap()).unwrap();
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        expr.eval(&mut |name: &str| map.get(name).copied())
    }

    fn refused(vars: &str) -> String {
        VarsExpr::compile(&serde_json::from_str(vars).unwrap()).unwrap_err()
    }

    #[test]
    fn equality_and_its_number_and_null_cases() {
        let x = |v| [("arg_x", v)];
        assert!(eval(r#"[["arg_x","==","json"]]"#, &x("json")));
        assert!(!eval(r#"[["arg_x","==","json"]]"#, &x("JSON")));
        assert!(!eval(r#"[["arg_x","==","json"]]"#, &[]), "missing");
        assert!(eval(r#"[["arg_x","==",10]]"#, &x("10.0")), "as numbers");
        assert!(
            eval(r#"[["arg_x","==",16]]"#, &x(" 0x10 ")),
            "Lua's tonumber"
        );
        assert!(!eval(r#"[["arg_x","==",10]]"#, &x("ten")));
        assert!(!eval(r#"[["arg_x","==","10"]]"#, &x("10.0")), "as text");
        assert!(eval(r#"[["arg_x","==",null]]"#, &[]), "null is missing");
        assert!(!eval(r#"[["arg_x","==",null]]"#, &x("")));
        assert!(!eval(r#"[["arg_x","==",true]]"#, &x("true")));
        assert!(!eval(r#"[["arg_x","==",["a"]]]"#, &x("a")));
        // `~=` is the negation in every case, a missing variable included.
        assert!(eval(r#"[["arg_x","~=","json"]]"#, &[]));
        assert!(eval(r#"[["arg_x","~=","json"]]"#, &x("xml")));
        assert!(!eval(r#"[["arg_x","~=","json"]]"#, &x("json")));
        assert!(eval(r#"[["arg_x","~=",10]]"#, &x("ten")), "not a number");
        assert!(eval(r#"[["arg_x","~=",10]]"#, &[]));
        assert!(!eval(r#"[["arg_x","~=",10]]"#, &x("1e1")));
        assert!(!eval(r#"[["arg_x","~=",null]]"#, &[]));
        assert!(eval(r#"[["arg_x","~=",true]]"#, &x("true")));
        // The old form: `==` with the lowered value.
        assert!(eval(r#"[["arg_x","JSON"]]"#, &x("json")));
        assert!(eval(r#"[["arg_x","=="]]"#, &[]), "`==` and no value: null");
    }

    #[test]
    fn comparisons_read_numbers_and_fail_otherwise() {
        let x = |v| [("arg_x", v)];
        assert!(eval(r#"[["arg_x",">",10]]"#, &x("11")));
        assert!(!eval(r#"[["arg_x",">",10]]"#, &x("10")));
        assert!(eval(r#"[["arg_x",">=",10]]"#, &x("10")));
        assert!(
            eval(r#"[["arg_x","<","10"]]"#, &x("9.5")),
            "a string value is read as a number"
        );
        assert!(eval(r#"[["arg_x","<=",-1]]"#, &x("-1")));
        assert!(
            !eval(r#"[["arg_x",">",2]]"#, &x("10a")),
            "not a number: false, not a text comparison"
        );
        assert!(!eval(r#"[["arg_x","<",2]]"#, &[]), "missing");
        assert!(!eval(r#"[["arg_x","<",2]]"#, &x("nan")));
        assert!(!eval(r#"[["arg_x","<",2]]"#, &x("-inf")));
        assert!(
            !eval(r#"[["arg_x",">","ten"]]"#, &x("11")),
            "right side not a number"
        );
        assert!(!eval(r#"[["arg_x",">",[1]]]"#, &x("11")));
        // Negation of a false comparison is true, even on a missing value.
        assert!(eval(r#"[["arg_x","!",">",15]]"#, &[]));
        assert!(eval(r#"[["arg_x","!",">",15]]"#, &x("12")));
        assert!(!eval(r#"[["arg_x","!",">",15]]"#, &x("16")));
    }

    #[test]
    fn regexes_search_anywhere_and_are_checked_at_load() {
        let h = |v| [("http_x_a", v)];
        assert!(eval(r#"[["http_x_a","~~","^a.*"]]"#, &h("abc")));
        assert!(!eval(r#"[["http_x_a","~~","^a.*"]]"#, &h("Abc")));
        assert!(eval(r#"[["http_x_a","~*","^a.*"]]"#, &h("Abc")));
        assert!(eval(r#"[["http_x_a","~~","b"]]"#, &h("abc")), "unanchored");
        assert!(!eval(r#"[["http_x_a","~~",".*"]]"#, &[]), "missing: false");
        assert!(eval(r#"[["http_x_a","!","~~",".*"]]"#, &[]));
        assert!(eval(r#"[["http_x_a","!","~~","^z"]]"#, &h("abc")));
        let bad = refused(r#"[["http_x_a","~~","(a"]]"#);
        assert!(
            bad.contains("`vars[0]`: the regex \"(a\" does not compile"),
            "{bad}"
        );
        let pcre = refused(r#"[["http_x_a","~~","a(?=b)"]]"#);
        assert!(pcre.contains("no look-around"), "{pcre}");
        assert!(refused(r#"[["arg_a","~~",1]]"#).contains("needs a regex string"));
    }

    #[test]
    fn in_has_and_ipmatch() {
        let x = |v| [("arg_x", v)];
        assert!(eval(r#"[["arg_x","in",["a","b"]]]"#, &x("b")));
        assert!(!eval(r#"[["arg_x","in",["a","b"]]]"#, &x("c")));
        assert!(
            !eval(r#"[["arg_x","in",[1,2]]]"#, &x("1")),
            "a number never equals text"
        );
        assert!(
            !eval(r#"[["arg_x","in","abc"]]"#, &x("abc")),
            "not a list: false"
        );
        assert!(!eval(r#"[["arg_x","in",["a"]]]"#, &[]));
        assert!(eval(r#"[["arg_x","!","in",["a"]]]"#, &x("z")));
        assert!(
            !eval(r#"[["arg_x","has","a"]]"#, &x("a")),
            "a single value has nothing"
        );
        assert!(eval(r#"[["arg_x","!","has","a"]]"#, &x("a")));
        let r = |v| [("remote_addr", v)];
        let ips = r#"[["remote_addr","ipmatch",["127.0.0.1","10.0.0.0/8","fe80::/10"]]]"#;
        assert!(eval(ips, &r("127.0.0.1")));
        assert!(eval(ips, &r("10.2.3.4")));
        assert!(eval(ips, &r("fe80::1")));
        assert!(!eval(ips, &r("127.0.0.2")));
        assert!(!eval(ips, &r("not an ip")));
        assert!(!eval(ips, &[]));
        assert!(
            eval(
                r#"[["remote_addr","ipmatch","127.0.0.0/16"]]"#,
                &r("127.0.9.9")
            ),
            "one string"
        );
        for bad in [
            r#"[["remote_addr","ipmatch",""]]"#,
            r#"[["remote_addr","ipmatch",[]]]"#,
            r#"[["remote_addr","ipmatch",null]]"#,
            r#"[["remote_addr","ipmatch",["300.0.0.1"]]]"#,
            r#"[["remote_addr","ipmatch",["10.0.0.0/33"]]]"#,
        ] {
            assert!(refused(bad).contains("invalid ip address"), "{bad}");
        }
    }

    #[test]
    fn and_or_and_their_negations_nest() {
        let v = r#"["AND",["arg_name","==","json"],["OR",["arg_weight",">",10],["arg_height","!",">",15]]]"#;
        assert!(eval(v, &[("arg_name", "json"), ("arg_weight", "11")]));
        assert!(
            eval(v, &[("arg_name", "json"), ("arg_height", "3")]),
            "missing height: ! > holds"
        );
        assert!(!eval(
            v,
            &[
                ("arg_name", "json"),
                ("arg_weight", "1"),
                ("arg_height", "30")
            ]
        ));
        assert!(!eval(v, &[("arg_name", "xml"), ("arg_weight", "11")]));
        let not = r#"["!AND",["arg_a","==","1"],["arg_b","==","2"]]"#;
        assert!(eval(not, &[("arg_a", "1")]));
        assert!(!eval(not, &[("arg_a", "1"), ("arg_b", "2")]));
        let nor = r#"["!or",["arg_a","==","1"],["arg_b","==","2"]]"#;
        assert!(eval(nor, &[]), "logic names in any case");
        assert!(!eval(nor, &[("arg_b", "2")]));
        let list = r#"[["arg_a","==","1"],["OR",["arg_b","==","2"],["arg_c","==","3"]]]"#;
        assert!(eval(list, &[("arg_a", "1"), ("arg_c", "3")]));
        assert!(!eval(list, &[("arg_a", "1")]));
        assert!(eval("[]", &[]), "empty: always true");
        assert!(
            eval(r#"[["arg_a","IN",["x"]]]"#, &[("arg_a", "x")]),
            "operators in any case"
        );
    }

    #[test]
    fn malformed_expressions_are_refused_with_their_place() {
        for (vars, says) in [
            (r#"{"a":1}"#, "must be a list"),
            (r#"["arg_x","==","1"]"#, "wrapped in its own list"),
            (
                r#"[["OR",["arg_x","==","1"]]]"#,
                "`vars[0]`: \"OR\" needs two or more",
            ),
            (r#"[[]]"#, "`vars[0]` is empty"),
            (
                r#"[["arg_x","=~","1"]]"#,
                "`vars[0]`: invalid operator \"=~\"",
            ),
            (r#"[["arg_x","not","==","1"]]"#, "bad 'not' expression"),
            (
                r#"[[1,"==","1"]]"#,
                "`vars[0][0]`: the variable's name is a string",
            ),
            (r#"[["arg_x"]]"#, "no operator"),
            (r#"[["arg_x",{},"1"]]"#, "is not a string"),
            (r#"[["arg_x","==","1"],"x"]"#, "`vars[1]` is \"x\""),
            (
                r#"["AND",["arg_a","==","1"],["arg_b","<>","1"]]"#,
                "`vars[2]`: invalid operator",
            ),
            (
                r#"[["arg_x","==","1"],["post_arg_user","~=","root"]]"#,
                "`vars[1][0]`: \"post_arg_user\" is not a variable extplug computes",
            ),
            (
                r#"["OR",["arg_x","==","1"],["server_name","==","a"]]"#,
                "`vars[2][0]`: \"server_name\" is not a variable extplug computes",
            ),
            (r#"[["arg_","==","1"]]"#, "\"arg_\" is not a variable"),
        ] {
            let e = refused(vars);
            assert!(e.contains(says), "{vars}: {e}");
        }
    }

    #[test]
    fn lua_tonumber_reads_what_lua_reads() {
        assert_eq!(lua_tonumber("10"), Some(10.0));
        assert_eq!(lua_tonumber(" -1.5e2 "), Some(-150.0));
        assert_eq!(lua_tonumber("0x1F"), Some(31.0));
        assert_eq!(lua_tonumber(".5"), Some(0.5));
        for no in ["", " ", "abc", "1a", "inf", "nan", "0x", "e5", "--1", "1 2"] {
            assert_eq!(lua_tonumber(no), None, "{no:?}");
        }
    }

    #[test]
    fn addresses_and_cidrs_parse_as_ipmatcher_takes_them() {
        assert!(parse_ip_or_cidr("[::1]").is_ok());
        assert!(parse_ip_or_cidr("::ffff:10.0.0.1").is_ok());
        let mapped = parse_ip_or_cidr("::ffff:10.0.0.1").unwrap();
        assert!(ip_within(&[mapped], "10.0.0.1".parse().unwrap()));
        assert!(ip_within(
            &[parse_ip_or_cidr("10.0.0.0/8").unwrap()],
            "::ffff:10.9.9.9".parse().unwrap()
        ));
        assert!(parse_ip_or_cidr("10.0.0.1:80").is_err());
        assert!(parse_ip_or_cidr("localhost").is_err());
        // An IPv4-mapped CIDR matches the (IPv4) client it covers.
        let net = parse_ip_or_cidr("::ffff:10.0.0.0/104").unwrap();
        assert_eq!(net, "10.0.0.0/8".parse::<IpNet>().unwrap());
        assert!(ip_within(&[net], "10.9.9.9".parse().unwrap()));
        assert!(ip_within(&[net], "::ffff:10.9.9.9".parse().unwrap()));
        assert!(!ip_within(&[net], "11.0.0.1".parse().unwrap()));
        let whole = parse_ip_or_cidr("[::ffff:0.0.0.0/96]").unwrap();
        assert!(ip_within(&[whole], "192.0.2.1".parse().unwrap()));
        // Not mapped, or wider than the mapped range: as written.
        assert!(matches!(
            parse_ip_or_cidr("fe80::/10").unwrap(),
            IpNet::V6(_)
        ));
        assert!(matches!(
            parse_ip_or_cidr("::ffff:0:0/80").unwrap(),
            IpNet::V6(_)
        ));
    }
}

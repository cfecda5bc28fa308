//! Filters and transforms: the CEL expressions a webhook may carry, compiled once when the webhook
//! is created or updated, kept compiled in the routing snapshot, and evaluated by the transformer
//! stage for the events routed to the webhook.
//!
//! Why CEL (the Common Expression Language): it is made for exactly this — small expressions
//! over untrusted data, with no loops, no recursion, no I/O — so an evaluation always ends.
//! Kubernetes, Envoy and cloud event routers use it for the same job. "Ends" is not "ends soon",
//! though, and the `cel` crate (0.15) recurses as deep as the expression and has no cost limit,
//! so wss adds both bounds: limits on the expression's shape at registration ([`MAX_DEPTH`],
//! [`MAX_NODES`], [`MAX_SOURCE_BYTES`]) and a budget per evaluation ([`MAX_STEPS`],
//! [`MAX_PRODUCED_BYTES`], see "The evaluation budget" below); threads that evaluate get
//! [`EVAL_STACK_BYTES`] of stack.
//!
//! Both kinds of expression see one variable, `event`, the envelope of docs/contract.md §1–2:
//!
//! ```text
//! event.id          string  the event id receivers dedupe on
//! event.type        string  e.g. "order.status_updated"
//! event.tenant      string
//! event.created_at  string  RFC 3339 UTC, as in the request body (timestamp(event.created_at) for maths)
//! event.data        any     the event's JSON payload
//! event.attributes  map     the entry's other fields, string to string
//! ```
//!
//! - A **filter** must evaluate to a `bool`; `false` means this webhook does not get the event.
//! - A **transform**'s value (a map, list or scalar) is written as JSON and sent as the request
//!   body instead of the envelope.
//!
//! The pieces, in the order they are used:
//!
//! 1. [`Filter::compile`] / [`Transform::compile`] at registration: a length limit, the CEL
//!    parser (its errors come back with line, column and a caret; it runs on a thread with a
//!    stack it cannot exhaust), the depth and node limits, then a static check that
//!    every variable is `event` (or a comprehension's own), so that a typo is refused at once
//!    instead of dead-lettering every event later. (The `cel` crate has no type checker; a
//!    filter whose shape alone shows it is not boolean — a literal, arithmetic — is refused too.)
//! 2. [`Evaluator`], one per transformer thread, holds the root CEL context. A context with the
//!    standard library costs 30–50 µs to build, so the root is made once and each event gets a
//!    child scope holding its `event` variable.
//! 3. [`Evaluator::bind`] converts an event's envelope to CEL values once, however many webhooks
//!    evaluate against it; strings are borrowed from the event, not copied.
//! 4. [`Bound::apply`] runs one webhook's filter and transform and says what to send.
//!
//! **A missing field is an error**, as in CEL itself: `event.data.status == "shipped"` on an
//! event without `status` fails, and that delivery is dead-lettered (reason `filter_error`)
//! rather than silently dropped, so that a misspelt field shows up instead of starving a
//! receiver. Where absence is normal, say so: `has(event.data.status) && event.data.status ==
//! "shipped"`, or `event.data.?status.orValue("") == "shipped"`.
//!
//! JSON → CEL: objects become maps, arrays lists, strings strings, `true`/`false` bools, `null`
//! null; a number without fraction or exponent that fits `int` (i64) is an `int`, a larger one
//! a `uint`, any other a `double`. (CEL compares `int`, `uint` and `double` with each other, so
//! `event.data.amount > 100` holds for `150` and `150.5` alike; arithmetic needs one type.)
//!
//! CEL → JSON, for a transform's value: maps become objects with their keys **sorted** (so a
//! body is reproducible byte for byte), `int`/`uint`/`bool` keys written as strings; lists become
//! arrays; `bytes` a base64 string (standard alphabet, padded); a `timestamp` an RFC 3339 UTC
//! string (`2026-01-01T00:00:00Z`, with 3, 6 or 9 fraction digits only when it has a fraction);
//! a `duration` a string of seconds with an `s` suffix (`90s`, `1.500s`), both as in the
//! protobuf JSON mapping; a type value its name. A `double` that is NaN or infinite, an optional
//! value, or two keys that would be written alike (`1` and `"1"`) have no JSON form: the
//! evaluation fails with a reason saying where in the value it was.

use std::{
    borrow::Cow,
    collections::HashMap,
    fmt,
    io::Write as _,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{Arc, OnceLock},
};

use base64::Engine as _;
use cel::{
    common::{
        ast::{EntryExpr, Expr, IdedEntryExpr, IdedExpr, LiteralValue},
        types::{
            CelBool, CelBytes, CelDouble, CelDuration, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelTimestamp, CelType,
            CelUInt, Kind,
        },
        value::Val,
    },
    Context, Env, ExecutionError, Program, Value,
};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Longest accepted expression, in bytes.
pub const MAX_SOURCE_BYTES: usize = 4096;
/// Deepest nesting of the parsed expression (after macros such as `map` are expanded): each
/// operator, call, selection, list, map and comprehension is a level. Evaluation recurses once
/// per level, so this bounds its stack.
pub const MAX_DEPTH: usize = 64;
/// Stack for a thread that evaluates expressions (the transformer's): [`MAX_DEPTH`] levels,
/// each about doubled by the budget checks, and values nested as deep as event data may be
/// (`pipeline::event::MAX_JSON_DEPTH`) plus what the expression nests, with room to spare
/// (measured: see the `limits_hold_for_every_construct` test).
pub const EVAL_STACK_BYTES: usize = 32 << 20;
/// Most nodes of the parsed expression (after macro expansion).
pub const MAX_NODES: usize = 1000;
/// Most steps one evaluation may take: comprehension iterations (`map`, `filter`, `all`,
/// `exists`…, counted when the loop starts, for every element), comparisons of `distinct` and
/// `sort`, elements of `lists.range`.
pub const MAX_STEPS: u64 = 1_000_000;
/// Most bytes one evaluation may produce in new values: strings, bytes, lists and maps made by
/// operators and functions (`+`, `replace`, `join`, `map`…), each counted when made.
pub const MAX_PRODUCED_BYTES: u64 = 64 << 20;

/// Most characters of a run-time error kept in a dead letter's detail: a CEL error may quote a
/// whole operand, and that operand may be the whole event.
const MAX_ERROR_CHARS: usize = 512;

/// Namespaces of the functions offered here (`optional.of`, `base64.encode`, `math.abs`,
/// `strings.quote`, `lists.range`): a call through one is not a variable reference.
const FUNCTION_NAMESPACES: &[&str] = &["optional", "base64", "math", "strings", "lists"];

/// The environment every expression is compiled and evaluated in: the standard library plus
/// the string, list, math and base64 extensions. Built once per process.
fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Env::stdlib();
        for (name, result) in [
            ("strings", env.add_extension(cel::extensions::strings)),
            ("lists", env.add_extension(cel::extensions::lists)),
            ("math", env.add_extension(cel::extensions::math)),
            ("encoders", env.add_extension(cel::extensions::encoders)),
            ("budget", env.add_extension(add_budget_functions)),
        ] {
            // Only a clash between two of the cel crate's own libraries could fail here.
            if let Err(err) = result {
                log::error!(target: "wss::expr", "the CEL {name} extension could not be added: {err}");
            }
        }
        Arc::new(env)
    })
}

// ---------------------------------------------------------------------------------------------
// Compiling
// ---------------------------------------------------------------------------------------------

/// Why an expression was refused. Shown after the field's name (`filter: …`), so each message
/// says what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompileError {
    #[error("is {len} bytes long; at most {MAX_SOURCE_BYTES} are allowed (select event types with event_types, and keep the expression to what they cannot say)")]
    TooLong { len: usize },
    #[error("nests more than {MAX_DEPTH} levels deep (the limit on nesting depth); split long chains of || or && into `in` lists (event.type in ['a', 'b']) and flatten nested calls")]
    TooDeep,
    #[error("has {nodes} nodes after macro expansion; at most {MAX_NODES} are allowed (the limit on node count); simplify it, or select event types with event_types")]
    TooManyNodes { nodes: usize },
    #[error("{}", render_syntax(.0))]
    Syntax(Vec<SyntaxError>),
    #[error("unknown variable {name:?} at line {line}, column {column}: the only variable is `event` (event.id, event.type, event.tenant, event.created_at, event.data, event.attributes)")]
    UnknownVariable { name: String, line: usize, column: usize },
    #[error("builds a message of type {type_name:?} at line {line}, column {column}, but there are no message types here; use a map literal such as {{\"key\": value}}")]
    MessageLiteral { type_name: String, line: usize, column: usize },
    #[error("must be a boolean expression, but this one yields {yields}; compare something, e.g. event.data.status == \"shipped\"")]
    NotBoolean { yields: &'static str },
    #[error("could not be compiled: the CEL parser failed on it ({0}); please report this expression")]
    Internal(String),
}

/// One error of the CEL parser, and where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    /// From 1.
    pub line: usize,
    /// From 1, in characters.
    pub column: usize,
    pub message: String,
    /// The offending line and a caret under the column.
    pub snippet: String,
}

/// At most the first three parser errors: later ones mostly follow from the first.
fn render_syntax(errors: &[SyntaxError]) -> String {
    const SHOWN: usize = 3;
    let mut out = String::new();
    for (i, e) in errors.iter().take(SHOWN).enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("syntax error at line {}, column {}: {}", e.line, e.column, e.message));
        if !e.snippet.is_empty() {
            out.push('\n');
            out.push_str(&e.snippet);
        }
    }
    if errors.len() > SHOWN {
        out.push_str(&format!("\n(and {} more)", errors.len() - SHOWN));
    }
    out
}

/// A compiled expression and the text it came from; shared by the snapshots that use it.
#[derive(Debug)]
struct Compiled {
    source: String,
    program: Program,
    /// The expression as evaluated: the program's, with the budget checks of [`meter`] woven in.
    metered: IdedExpr,
}

/// A webhook's filter, compiled: whether the webhook gets an event. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Filter(Arc<Compiled>);

/// A webhook's transform, compiled: its value is the request body. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Transform(Arc<Compiled>);

impl Filter {
    pub fn compile(source: &str) -> Result<Self, CompileError> {
        let compiled = compile(source)?;
        if let Some(yields) = never_boolean(&compiled.program.expression().expr) {
            return Err(CompileError::NotBoolean { yields });
        }
        Ok(Self(Arc::new(compiled)))
    }

    pub fn source(&self) -> &str {
        &self.0.source
    }

    /// Whether both are one compiled program (a rebuilt snapshot reuses unchanged ones).
    pub fn shares_program_with(&self, other: &Filter) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Transform {
    pub fn compile(source: &str) -> Result<Self, CompileError> {
        compile(source).map(|c| Self(Arc::new(c)))
    }

    pub fn source(&self) -> &str {
        &self.0.source
    }

    /// Whether both are one compiled program (a rebuilt snapshot reuses unchanged ones).
    pub fn shares_program_with(&self, other: &Transform) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Stack of the thread an expression is parsed on. The CEL parser is generated by ANTLR and
/// recurses some twenty rules per nesting level, up to its own limit of 96 levels; measured in a
/// debug build, 64 nested parentheses need 16 MiB (a release build needs far less). Only the
/// pages touched are ever committed.
const PARSE_STACK_BYTES: usize = 64 << 20;

/// Compiles on a thread of its own, with a stack the parser cannot exhaust whatever the source
/// (callers' threads, such as the control plane's, have 2 MiB).
fn compile(source: &str) -> Result<Compiled, CompileError> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(CompileError::TooLong { len: source.len() });
    }
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new().name("wss-cel-compile".into()).stack_size(PARSE_STACK_BYTES);
        match worker.spawn_scoped(scope, || compile_here(source)) {
            Ok(handle) => handle.join().unwrap_or_else(|panic| Err(CompileError::Internal(panic_text(&panic)))),
            Err(err) => Err(CompileError::Internal(format!("no thread to compile on: {err}"))),
        }
    })
}

fn compile_here(source: &str) -> Result<Compiled, CompileError> {
    // The parser is a large generated state machine; should it ever panic on some input, that
    // input is refused rather than taking the control plane's worker down.
    let parsed = catch_unwind(|| env().compile(source)).map_err(|panic| CompileError::Internal(panic_text(&panic)))?;
    let program = parsed.map_err(|errors| {
        // The parser's own nesting limit (96 levels) is the same refusal as ours.
        if errors.errors.iter().any(|e| e.msg.contains("Recursion limit")) {
            return CompileError::TooDeep;
        }
        CompileError::Syntax(
            errors
                .errors
                .iter()
                .map(|e| {
                    let line = usize::try_from(e.pos.0).unwrap_or(1).max(1);
                    let column = usize::try_from(e.pos.1).unwrap_or(1).max(1);
                    SyntaxError {
                        line,
                        column,
                        message: e.msg.strip_prefix("Syntax error: ").unwrap_or(&e.msg).to_owned(),
                        snippet: caret(source, line, column),
                    }
                })
                .collect(),
        )
    })?;
    check_shape(program.expression())?;
    check_references(&program, program.expression(), &mut Vec::new(), source)?;
    let mut next_id = max_id(program.expression()) + 1;
    let metered = meter(program.expression(), &mut next_id);
    Ok(Compiled { source: source.to_owned(), program, metered })
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned())
}

/// `| <line>` and `| ....^` under `column` (both from 1); empty when out of range.
fn caret(source: &str, line: usize, column: usize) -> String {
    match source.lines().nth(line - 1) {
        Some(text) => format!("| {text}\n| {}^", ".".repeat(column - 1)),
        None => String::new(),
    }
}

/// Line and column (from 1, in characters) of a character offset into `source`.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let (mut line, mut column) = (1, 1);
    for c in source.chars().take(offset) {
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

/// Every identifier must be `event`, a comprehension's own variable, a type name (`int`,
/// `string`, `google.protobuf.Timestamp`…) or a function namespace (`optional.of`): anything else
/// would fail on every event, so it is refused now.
fn check_references<'a>(program: &Program, expr: &'a IdedExpr, scope: &mut Vec<&'a str>, source: &str) -> Result<(), CompileError> {
    let position = |id: u64| {
        let offset = program.source_info().offset_for(id).map_or(0, |(start, _)| start as usize);
        line_column(source, offset)
    };
    match &expr.expr {
        Expr::Ident(name) => {
            let known = name == "event"
                || name.starts_with('@') // the parser's own accumulators
                || scope.contains(&name.as_str())
                || env().types().find_type(name).is_some();
            if !known {
                let (line, column) = position(expr.id);
                return Err(CompileError::UnknownVariable { name: name.clone(), line, column });
            }
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                let through_namespace = matches!(&target.expr,
                    Expr::Ident(n) if FUNCTION_NAMESPACES.contains(&n.as_str()) && !scope.contains(&n.as_str()));
                if !through_namespace {
                    check_references(program, target, scope, source)?;
                }
            }
            for arg in &call.args {
                check_references(program, arg, scope, source)?;
            }
        }
        Expr::Select(select) => {
            if qualified_name(expr).is_some_and(|name| env().types().find_type(&name).is_some()) {
                return Ok(());
            }
            check_references(program, &select.operand, scope, source)?;
        }
        Expr::Comprehension(comp) => {
            check_references(program, &comp.iter_range, scope, source)?;
            check_references(program, &comp.accu_init, scope, source)?;
            let depth = scope.len();
            scope.push(&comp.iter_var);
            if let Some(second) = &comp.iter_var2 {
                scope.push(second);
            }
            scope.push(&comp.accu_var);
            for part in [&comp.loop_cond, &comp.loop_step, &comp.result] {
                check_references(program, part, scope, source)?;
            }
            scope.truncate(depth);
        }
        Expr::List(list) => {
            for element in &list.elements {
                check_references(program, element, scope, source)?;
            }
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                match &entry.expr {
                    EntryExpr::MapEntry(e) => {
                        check_references(program, &e.key, scope, source)?;
                        check_references(program, &e.value, scope, source)?;
                    }
                    EntryExpr::StructField(f) => check_references(program, &f.value, scope, source)?,
                }
            }
        }
        Expr::Struct(s) => {
            let (line, column) = position(expr.id);
            return Err(CompileError::MessageLiteral { type_name: s.type_name.clone(), line, column });
        }
        Expr::Literal(_) | Expr::Unspecified => {}
    }
    Ok(())
}

/// The direct sub-expressions of `expr`.
/// The expressions of a map's or a struct's entries: a map entry's key and value, a field's value.
fn entry_children(entries: &[IdedEntryExpr]) -> Vec<&IdedExpr> {
    entries
        .iter()
        .flat_map(|entry| match &entry.expr {
            EntryExpr::MapEntry(e) => vec![&e.key, &e.value],
            EntryExpr::StructField(f) => vec![&f.value],
        })
        .collect()
}

fn children(expr: &IdedExpr) -> Vec<&IdedExpr> {
    match &expr.expr {
        Expr::Call(call) => call.target.as_deref().into_iter().chain(call.args.iter()).collect(),
        Expr::Select(select) => vec![&select.operand],
        Expr::Comprehension(c) => vec![&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result],
        Expr::List(list) => list.elements.iter().collect(),
        Expr::Map(map) => entry_children(&map.entries),
        Expr::Struct(s) => entry_children(&s.entries),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
    }
}

/// Refuses an expression deeper than [`MAX_DEPTH`] or larger than [`MAX_NODES`]. Iterative, so
/// that it cannot itself run out of stack on whatever the parser made.
fn check_shape(root: &IdedExpr) -> Result<(), CompileError> {
    let mut nodes = 0usize;
    let mut stack = vec![(root, 1usize)];
    while let Some((expr, depth)) = stack.pop() {
        nodes += 1;
        if depth > MAX_DEPTH {
            return Err(CompileError::TooDeep);
        }
        stack.extend(children(expr).into_iter().map(|child| (child, depth + 1)));
    }
    if nodes > MAX_NODES {
        return Err(CompileError::TooManyNodes { nodes });
    }
    Ok(())
}

/// The largest node id in a (shape-checked) expression.
fn max_id(expr: &IdedExpr) -> u64 {
    children(expr).into_iter().map(max_id).fold(expr.id, u64::max)
}

// ---------------------------------------------------------------------------------------------
// The evaluation budget
// ---------------------------------------------------------------------------------------------
//
// The cel crate has no cost limit of its own, and CEL, though it has no loops, can ask for a lot
// of work in a few characters: `lists.range(1000000).map(i, lists.range(1000000))`,
// `event.data.big.replace('a', event.data.big)`, `[...].distinct()` on a long list. So the
// compiled expression is rewritten ([`meter`]) with calls to functions of our own, whose names
// start with `@` (no source can spell them), that charge a per-evaluation budget of
// [`MAX_STEPS`] and [`MAX_PRODUCED_BYTES`] *before* the work is done where the work can be
// large (a comprehension's iterations, `distinct`, `sort`, `lists.range`, `replace`, `join`),
// and right after a value is made elsewhere (every other call's and comprehension's new value:
// an operator's result is at most a small multiple of its operands, which were charged when
// made). Once the budget is spent every charge fails, so the evaluation fails soon with
// [`EvalError::OverBudget`]. The shapes the interpreter optimizes (`@result + [x]` of `map`,
// `@result && x` of `all`) are left as they are.

/// The budget of the evaluation running on this thread.
#[derive(Debug, Clone, Copy)]
struct Budget {
    steps: u64,
    bytes: u64,
    /// What ran out, once something did.
    spent: Option<Spent>,
}

/// Which part of the budget ran out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Spent {
    Steps,
    Bytes,
}

thread_local! {
    static BUDGET: std::cell::Cell<Budget> = const { std::cell::Cell::new(Budget { steps: MAX_STEPS, bytes: MAX_PRODUCED_BYTES, spent: None }) };
}

/// Starts a fresh budget for one evaluation on this thread.
fn reset_budget() {
    BUDGET.with(|b| b.set(Budget { steps: MAX_STEPS, bytes: MAX_PRODUCED_BYTES, spent: None }));
}

/// What ran out during the evaluation on this thread, if anything did.
fn budget_spent() -> Option<Spent> {
    BUDGET.with(|b| b.get().spent)
}

/// Takes `steps` and `bytes` from this thread's budget, or fails (for good) when they are not left.
fn charge(steps: u64, bytes: u64) -> Result<(), ExecutionError> {
    BUDGET.with(|cell| {
        let mut budget = cell.get();
        let spent = if budget.spent.is_some() {
            budget.spent
        } else if steps > budget.steps {
            Some(Spent::Steps)
        } else if bytes > budget.bytes {
            Some(Spent::Bytes)
        } else {
            None
        };
        match spent {
            Some(what) => {
                budget.spent = Some(what);
                cell.set(budget);
                Err(ExecutionError::function_error("budget", over_budget_text(what)))
            }
            None => {
                budget.steps -= steps;
                budget.bytes -= bytes;
                cell.set(budget);
                Ok(())
            }
        }
    })
}

fn over_budget_text(what: Spent) -> String {
    match what {
        Spent::Steps => format!("the expression needs more than {MAX_STEPS} steps (comprehension iterations, comparisons) on this event"),
        Spent::Bytes => format!("the expression makes more than {} MiB of values on this event", MAX_PRODUCED_BYTES >> 20),
    }
}

/// About how many bytes a value holds: its strings and bytes, plus a word or two per element.
/// Iterative (values built from events nest, but never mind how deep).
fn value_bytes(value: &dyn Val) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        total += 16;
        match v.get_type().kind() {
            Kind::String => total += v.downcast_ref::<CelString>().map_or(0, |s| s.inner().len() as u64),
            Kind::Bytes => total += v.downcast_ref::<CelBytes>().map_or(0, |b| b.inner().len() as u64),
            Kind::List => {
                if let Some(list) = v.downcast_ref::<CelList>() {
                    stack.extend(list.inner().iter().map(|item| item.as_ref()));
                }
            }
            Kind::Map => {
                if let Some(map) = v.downcast_ref::<CelMap>() {
                    for (key, item) in map.inner() {
                        total += 16 + key_text(key).len() as u64;
                        stack.push(item.as_ref());
                    }
                }
            }
            _ => {}
        }
    }
    total
}

/// Elements of a list or map (0 for anything else).
fn element_count(value: &dyn Val) -> u64 {
    if let Some(list) = value.downcast_ref::<CelList>() {
        list.inner().len() as u64
    } else if let Some(map) = value.downcast_ref::<CelMap>() {
        map.inner().len() as u64
    } else {
        0
    }
}

type CowVal<'b, 'v> = cel::common::value::CowVal<'b, 'v>;

fn only_arg<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let count = args.len();
    args.into_iter().next().filter(|_| count == 1).ok_or_else(|| ExecutionError::invalid_argument_count(1, count))
}

/// `@wss_made(x)`: charges a value just made (owned); one merely looked up costs nothing.
fn budget_made<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let value = only_arg(args)?;
    if matches!(value, CowVal::Owned(_)) {
        charge(0, value_bytes(value.as_ref()))?;
    }
    Ok(value)
}

/// `@wss_iter(range)`: a comprehension is about to run once per element.
fn budget_iter<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let value = only_arg(args)?;
    charge(element_count(value.as_ref()), 0)?;
    Ok(value)
}

/// `@wss_quadratic(list)`: `distinct` compares every pair.
fn budget_quadratic<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let value = only_arg(args)?;
    let n = element_count(value.as_ref());
    charge(n.saturating_mul(n) / 2, n.saturating_mul(16))?;
    Ok(value)
}

/// `@wss_sort(list)`: `sort` and `sortBy` make n·log n comparisons and a new list.
fn budget_sort<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let value = only_arg(args)?;
    let n = element_count(value.as_ref());
    charge(n.saturating_mul(u64::from(n.max(2).ilog2()) + 1), n.saturating_mul(16))?;
    Ok(value)
}

/// `@wss_range(n)`: `lists.range(n)` makes n elements.
fn budget_range<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let value = only_arg(args)?;
    if let Some(n) = value.downcast_ref::<CelInt>().map(|n| u64::try_from(*n.inner()).unwrap_or(0)) {
        charge(n, n.saturating_mul(32))?;
    }
    Ok(value)
}

fn string_arg<'a>(value: &'a CowVal<'_, '_>) -> Result<&'a str, ExecutionError> {
    value
        .downcast_ref::<CelString>()
        .map(|s| s.inner())
        .ok_or_else(|| ExecutionError::UnexpectedType { got: value.get_type().name().to_owned(), want: "string".to_owned() })
}

/// `s.@wss_replace(from, to[, n])`: the strings extension's `replace`, with the size of the
/// result charged before it is made (`'a…a'.replace('a', <a long string>)` multiplies).
fn budget_replace<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let (this, from, to) = match args.as_slice() {
        [this, from, to] | [this, from, to, _] => (string_arg(this)?, string_arg(from)?, string_arg(to)?),
        _ => return Err(ExecutionError::invalid_argument_count(3, args.len())),
    };
    let limit = match args.get(3) {
        None => None,
        Some(n) => {
            let n = *n
                .downcast_ref::<CelInt>()
                .ok_or_else(|| ExecutionError::UnexpectedType { got: n.get_type().name().to_owned(), want: "int".to_owned() })?
                .inner();
            usize::try_from(n).ok() // negative: all
        }
    };
    let found = if from.is_empty() { this.chars().count() + 1 } else { this.matches(from).count() };
    let replaced = limit.map_or(found, |n| n.min(found)) as u64;
    let size = (this.len() as u64).saturating_add(replaced.saturating_mul(to.len() as u64));
    charge(this.len() as u64 / 64 + 1, size)?;
    let out = match limit {
        None => this.replace(from, to),
        Some(n) => this.replacen(from, to, n),
    };
    Ok(CowVal::Owned(Box::new(CelString::from(out))))
}

/// `list.@wss_join([sep])`: the strings extension's `join`, with the size of the result charged
/// before it is made (a long separator multiplies).
fn budget_join<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let (list, separator) = match args.as_slice() {
        [list] => (list, ""),
        [list, separator] => (list, string_arg(separator)?),
        _ => return Err(ExecutionError::invalid_argument_count(1, args.len())),
    };
    let list = list
        .downcast_ref::<CelList>()
        .ok_or_else(|| ExecutionError::UnexpectedType { got: list.get_type().name().to_owned(), want: "list".to_owned() })?;
    let mut parts = Vec::with_capacity(list.inner().len());
    for item in list.inner() {
        parts.push(
            item.downcast_ref::<CelString>()
                .map(|s| s.inner())
                .ok_or_else(|| ExecutionError::UnexpectedType { got: item.get_type().name().to_owned(), want: "string".to_owned() })?,
        );
    }
    let size =
        parts.iter().map(|p| p.len() as u64).sum::<u64>() + (parts.len().saturating_sub(1) as u64).saturating_mul(separator.len() as u64);
    charge(parts.len() as u64, size)?;
    Ok(CowVal::Owned(Box::new(CelString::from(parts.join(separator)))))
}

/// The functions [`meter`] weaves in, registered on the environment.
fn add_budget_functions(env: &mut Env) -> Result<(), cel::DeclarationError> {
    use cel::common::types::{DYN_TYPE, INT_TYPE, LIST_TYPE, STRING_TYPE};
    env.add_overload("@wss_made", "wss_made", vec![DYN_TYPE], budget_made)?;
    env.add_overload("@wss_iter", "wss_iter", vec![DYN_TYPE], budget_iter)?;
    env.add_overload("@wss_quadratic", "wss_quadratic", vec![DYN_TYPE], budget_quadratic)?;
    env.add_overload("@wss_sort", "wss_sort", vec![DYN_TYPE], budget_sort)?;
    env.add_overload("@wss_range", "wss_range", vec![DYN_TYPE], budget_range)?;
    env.add_member_overload("@wss_replace", "wss_replace", STRING_TYPE, vec![STRING_TYPE, STRING_TYPE], budget_replace)?;
    env.add_member_overload("@wss_replace", "wss_replace_n", STRING_TYPE, vec![STRING_TYPE, STRING_TYPE, INT_TYPE], budget_replace)?;
    env.add_member_overload("@wss_join", "wss_join", LIST_TYPE, vec![], budget_join)?;
    env.add_member_overload("@wss_join", "wss_join_sep", LIST_TYPE, vec![STRING_TYPE], budget_join)?;
    Ok(())
}

/// Calls whose result is never a new value of any size (comparisons, logic, lookups), or whose
/// operands are charged already (`_?_:_` yields one of them): not wrapped.
const UNMETERED_CALLS: &[&str] = &[
    "_&&_",
    "_||_",
    "!_",
    "_?_:_",
    "_==_",
    "_!=_",
    "_<_",
    "_<=_",
    "_>_",
    "_>=_",
    "@in",
    "_[_]",
    "_[?_]",
    "_?._",
    "@not_strictly_false",
    "size",
    "has",
    "matches",
    "startsWith",
    "endsWith",
    "contains",
    "int",
    "uint",
    "double",
    "bool",
    "type",
    "dyn",
];

/// `expr` with the budget checks woven in (see the section's comment). Recursive: only called
/// on shape-checked expressions, at most [`MAX_DEPTH`] deep.
fn meter(expr: &IdedExpr, next_id: &mut u64) -> IdedExpr {
    fn wrap(name: &str, inner: IdedExpr, next_id: &mut u64) -> IdedExpr {
        *next_id += 1;
        IdedExpr {
            id: *next_id,
            expr: Expr::Call(cel::common::ast::CallExpr { func_name: name.to_owned(), target: None, args: vec![inner] }),
        }
    }
    let rewritten = match &expr.expr {
        Expr::Call(call) => {
            let mut call = call.clone();
            call.target = call.target.as_deref().map(|t| Box::new(meter(t, next_id)));
            call.args = call.args.iter().map(|a| meter(a, next_id)).collect();
            let is_accumulator = |e: &IdedExpr| matches!(&e.expr, Expr::Ident(name) if name.starts_with('@'));
            // The shapes the interpreter recognises in comprehensions stay as they are.
            let folds_accumulator = call.target.as_deref().is_some_and(is_accumulator) || call.args.iter().any(is_accumulator);
            let through_lists = matches!(call.target.as_deref().map(|t| &t.expr), Some(Expr::Ident(n)) if n == "lists");
            match (call.func_name.as_str(), call.target.is_some()) {
                ("range", true) if through_lists => {
                    call.args = call.args.into_iter().map(|a| wrap("@wss_range", a, next_id)).collect();
                    let ided = IdedExpr { id: expr.id, expr: Expr::Call(call) };
                    return wrap("@wss_made", ided, next_id);
                }
                ("distinct", true) => call.target = call.target.map(|t| Box::new(wrap("@wss_quadratic", *t, next_id))),
                ("sort" | "@sortByAssociatedKeys", true) => call.target = call.target.map(|t| Box::new(wrap("@wss_sort", *t, next_id))),
                ("replace", true) => call.func_name = "@wss_replace".into(),
                ("join", true) => call.func_name = "@wss_join".into(),
                _ => {}
            }
            let unmetered = folds_accumulator
                || UNMETERED_CALLS.contains(&call.func_name.as_str())
                || call.func_name == "@wss_replace"
                || call.func_name == "@wss_join";
            let ided = IdedExpr { id: expr.id, expr: Expr::Call(call) };
            return if unmetered { ided } else { wrap("@wss_made", ided, next_id) };
        }
        Expr::Comprehension(c) => {
            let mut c = c.clone();
            c.iter_range = wrap("@wss_iter", meter(&c.iter_range, next_id), next_id);
            c.accu_init = meter(&c.accu_init, next_id);
            c.loop_cond = meter(&c.loop_cond, next_id);
            c.loop_step = meter(&c.loop_step, next_id);
            c.result = meter(&c.result, next_id);
            let ided = IdedExpr { id: expr.id, expr: Expr::Comprehension(c) };
            return wrap("@wss_made", ided, next_id);
        }
        Expr::Select(select) => {
            let mut select = select.clone();
            select.operand = Box::new(meter(&select.operand, next_id));
            Expr::Select(select)
        }
        Expr::List(list) => {
            let mut list = list.clone();
            list.elements = list.elements.iter().map(|e| meter(e, next_id)).collect();
            Expr::List(list)
        }
        Expr::Map(map) => {
            let mut map = map.clone();
            for entry in &mut map.entries {
                match &mut entry.expr {
                    EntryExpr::MapEntry(e) => {
                        e.key = meter(&e.key, next_id);
                        e.value = meter(&e.value, next_id);
                    }
                    EntryExpr::StructField(f) => f.value = meter(&f.value, next_id),
                }
            }
            Expr::Map(map)
        }
        other => other.clone(),
    };
    IdedExpr { id: expr.id, expr: rewritten }
}

/// `a.b.c` as a dotted name when the expression is only identifiers and field selections.
fn qualified_name(expr: &IdedExpr) -> Option<String> {
    match &expr.expr {
        Expr::Ident(name) => Some(name.clone()),
        Expr::Select(select) if !select.test => Some(format!("{}.{}", qualified_name(&select.operand)?, select.field)),
        _ => None,
    }
}

/// What a filter yields when its shape alone shows it is not a `bool`.
fn never_boolean(expr: &Expr) -> Option<&'static str> {
    match expr {
        Expr::Literal(LiteralValue::Boolean(_)) => None,
        Expr::Literal(LiteralValue::Int(_)) => Some("an int"),
        Expr::Literal(LiteralValue::UInt(_)) => Some("a uint"),
        Expr::Literal(LiteralValue::Double(_)) => Some("a double"),
        Expr::Literal(LiteralValue::String(_)) => Some("a string"),
        Expr::Literal(LiteralValue::Bytes(_)) => Some("bytes"),
        Expr::Literal(LiteralValue::Null) => Some("null"),
        Expr::List(_) => Some("a list"),
        Expr::Map(_) => Some("a map"),
        Expr::Call(call) if matches!(call.func_name.as_str(), "_+_" | "_-_" | "_*_" | "_/_" | "_%_" | "-_") => {
            Some("the result of arithmetic")
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluating
// ---------------------------------------------------------------------------------------------

/// The event as expressions see it, borrowed from the pipeline's event.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub id: &'a str,
    pub event_type: &'a str,
    pub tenant: &'a str,
    /// RFC 3339, as in the request body.
    pub created_at: &'a str,
    /// JSON text.
    pub data: &'a str,
    pub attributes: &'a [(String, String)],
}

/// Why an expression failed on one event; the delivery is dead-lettered with this text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("event.data cannot be given to CEL: {0}")]
    Data(String),
    #[error("{}", describe(.0))]
    Execution(ExecutionError),
    #[error("yields a {got}, not a bool")]
    NotBoolean { got: String },
    #[error("its value cannot be written as JSON: {what} (at {path})")]
    NotJson { what: String, path: String },
    #[error("the CEL library failed on this event ({0}); please report the expression and the event")]
    Internal(String),
    #[error("{}: it was stopped (make it do less per event, e.g. filter lists before mapping them)", over_budget_text(*.0))]
    OverBudget(Spent),
}

/// An execution error in words, with a hint for the common case, and of bounded length.
fn describe(err: &ExecutionError) -> String {
    let text = match err {
        ExecutionError::NoSuchKey(key) => format!(
            "no such key: {key:?} (a missing field is an error: guard it with has(….{key}), or give a default with ….?{key}.orValue(…))"
        ),
        other => other.to_string(),
    };
    truncate_chars(text, MAX_ERROR_CHARS)
}

fn truncate_chars(mut text: String, max: usize) -> String {
    if let Some((at, _)) = text.char_indices().nth(max) {
        text.truncate(at);
        text.push('…');
    }
    text
}

/// Evaluates expressions: one per thread, reused for every event.
pub struct Evaluator {
    root: Context<'static, 'static>,
}

impl Default for Evaluator {
    fn default() -> Self {
        Self::new()
    }
}

impl Evaluator {
    pub fn new() -> Self {
        Self { root: Context::with_env(env().clone()) }
    }

    /// Converts the envelope to CEL values, once for all the webhooks that evaluate against it.
    pub fn bind<'a>(&'a self, envelope: &Envelope<'a>) -> Result<Bound<'a>, EvalError> {
        let event = envelope_val(envelope)?;
        // A root that borrows nothing can stand in for one that borrows for 'a.
        let root: &'a Context<'a, 'a> = &self.root;
        let mut scope = root.new_inner_scope();
        scope.add_variable_as_val("event", event);
        Ok(Bound { scope })
    }
}

/// One event bound to the variable `event`, ready for any number of expressions.
pub struct Bound<'a> {
    scope: Context<'a, 'a>,
}

/// What one webhook's expressions make of one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The filter said no.
    Skip,
    /// Send the default body, the envelope.
    Envelope,
    /// Send this body, the transform's value.
    Body(Vec<u8>),
}

/// Which expression failed, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Failure {
    #[error("filter failed: {0}")]
    Filter(EvalError),
    #[error("transform failed: {0}")]
    Transform(EvalError),
}

impl Bound<'_> {
    /// The filter (when there is one) decides; then the transform (when there is one) makes the
    /// body.
    pub fn apply(&self, filter: Option<&Filter>, transform: Option<&Transform>) -> Result<Outcome, Failure> {
        if let Some(filter) = filter {
            if !self.filter(filter).map_err(Failure::Filter)? {
                return Ok(Outcome::Skip);
            }
        }
        match transform {
            Some(transform) => self.transform(transform).map(Outcome::Body).map_err(Failure::Transform),
            None => Ok(Outcome::Envelope),
        }
    }

    /// True when the webhook gets the event.
    pub fn filter(&self, filter: &Filter) -> Result<bool, EvalError> {
        self.guarded(|| {
            let value = Value::resolve_val(&filter.0.metered, &self.scope).map_err(EvalError::Execution)?;
            match value.downcast_ref::<CelBool>() {
                Some(b) => Ok(*b.inner()),
                None => Err(EvalError::NotBoolean { got: value.get_type().name().to_owned() }),
            }
        })
    }

    /// The request body: the transform's value as JSON.
    pub fn transform(&self, transform: &Transform) -> Result<Vec<u8>, EvalError> {
        self.guarded(|| {
            let value = Value::resolve_val(&transform.0.metered, &self.scope).map_err(EvalError::Execution)?;
            let mut out = Vec::with_capacity(256);
            write_json(&mut out, &*value).map_err(|failure| EvalError::NotJson { path: failure.path_text(), what: failure.what })?;
            Ok(out)
        })
    }

    /// A panic inside the CEL library fails this one evaluation instead of the pipeline, and
    /// the evaluation runs on a fresh budget: one that ran out fails it whatever it yielded
    /// (an `exists` may have absorbed the error).
    fn guarded<T>(&self, evaluate: impl FnOnce() -> Result<T, EvalError>) -> Result<T, EvalError> {
        reset_budget();
        let result = catch_unwind(AssertUnwindSafe(evaluate)).unwrap_or_else(|panic| Err(EvalError::Internal(panic_text(&panic))));
        match budget_spent() {
            Some(spent) => Err(EvalError::OverBudget(spent)),
            None => result,
        }
    }
}

/// The `event` map; its strings borrow from the envelope.
fn envelope_val<'a>(e: &Envelope<'a>) -> Result<Box<dyn Val + 'a>, EvalError> {
    let data = json_to_val(e.data)?;
    let attributes: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = e
        .attributes
        .iter()
        .map(|(k, v)| (CelMapKey::String(CelString::from(k.as_str())), Box::new(CelString::from(v.as_str())) as Box<dyn Val + 'a>))
        .collect();
    let mut map: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = HashMap::with_capacity(6);
    let mut put = |key: &'static str, value: Box<dyn Val + 'a>| {
        map.insert(CelMapKey::String(CelString::from(key)), value);
    };
    put("id", Box::new(CelString::from(e.id)));
    put("type", Box::new(CelString::from(e.event_type)));
    put("tenant", Box::new(CelString::from(e.tenant)));
    put("created_at", Box::new(CelString::from(e.created_at)));
    put("data", data);
    put("attributes", Box::new(CelMap::from(attributes)));
    Ok(Box::new(CelMap::from(map)))
}

/// JSON text as a CEL value (module docs: the rules); strings without escapes are borrowed.
fn json_to_val(text: &str) -> Result<Box<dyn Val + '_>, EvalError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = JsonSeed.deserialize(&mut de).map_err(|e| EvalError::Data(e.to_string()))?;
    de.end().map_err(|e| EvalError::Data(e.to_string()))?;
    Ok(value)
}

struct JsonSeed;

impl<'de> DeserializeSeed<'de> for JsonSeed {
    type Value = Box<dyn Val + 'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Box<dyn Val + 'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Box::new(CelBool::from(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Box::new(CelInt::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => Box::new(CelInt::from(i)),
            Err(_) => Box::new(CelUInt::from(v)),
        })
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Box::new(CelDouble::from(v)))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Box::new(CelString::from(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Box::new(CelString::from(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Box::new(CelString::from(v)))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Box::new(CelNull))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items: Vec<Box<dyn Val + 'de>> = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(JsonSeed)? {
            items.push(item);
        }
        Ok(Box::new(CelList::from(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut map: HashMap<CelMapKey<'de>, Box<dyn Val + 'de>> = HashMap::with_capacity(access.size_hint().unwrap_or(0));
        while let Some(key) = access.next_key_seed(KeySeed)? {
            let value = access.next_value_seed(JsonSeed)?;
            map.insert(CelMapKey::String(key), value); // a repeated key: the last wins, as in serde_json
        }
        Ok(Box::new(CelMap::from(map)))
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = CelString<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = CelString<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(CelString::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(CelString::from(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(CelString::from(v))
    }
}

// ---------------------------------------------------------------------------------------------
// CEL → JSON
// ---------------------------------------------------------------------------------------------

/// A value with no JSON form, and the path to it (gathered on the way back up).
struct NotJson {
    what: String,
    /// Innermost step first.
    path: Vec<String>,
}

impl NotJson {
    fn new(what: impl Into<String>) -> Self {
        Self { what: what.into(), path: Vec::new() }
    }

    fn at(mut self, step: String) -> Self {
        self.path.push(step);
        self
    }

    fn path_text(&self) -> String {
        if self.path.is_empty() {
            return "the top level".into();
        }
        self.path.iter().rev().map(String::as_str).collect()
    }
}

/// Writes `value` as JSON, by the rules of the module docs.
fn write_json(out: &mut Vec<u8>, value: &dyn Val) -> Result<(), NotJson> {
    let not_builtin = || NotJson::new(format!("a {} that is not one of CEL's own values", value.get_type().name()));
    match value.get_type().kind() {
        Kind::NullType => out.extend_from_slice(b"null"),
        Kind::Boolean => {
            let b = value.downcast_ref::<CelBool>().ok_or_else(not_builtin)?;
            out.extend_from_slice(if *b.inner() { b"true" } else { b"false" });
        }
        Kind::Int => {
            let i = value.downcast_ref::<CelInt>().ok_or_else(not_builtin)?;
            let _ = write!(out, "{}", i.inner()); // writing to a Vec cannot fail
        }
        Kind::UInt => {
            let u = value.downcast_ref::<CelUInt>().ok_or_else(not_builtin)?;
            let _ = write!(out, "{}", u.inner());
        }
        Kind::Double => {
            let d = *value.downcast_ref::<CelDouble>().ok_or_else(not_builtin)?.inner();
            if !d.is_finite() {
                return Err(NotJson::new(format!("the double {d} (JSON has no NaN or infinity)")));
            }
            serde_json::to_writer(&mut *out, &d).map_err(|e| NotJson::new(e.to_string()))?;
        }
        Kind::String => write_string(out, value.downcast_ref::<CelString>().ok_or_else(not_builtin)?.inner()),
        Kind::Bytes => {
            let b = value.downcast_ref::<CelBytes>().ok_or_else(not_builtin)?;
            write_string(out, &base64::engine::general_purpose::STANDARD.encode(b.inner()));
        }
        Kind::Timestamp => {
            let t = value.downcast_ref::<CelTimestamp>().ok_or_else(not_builtin)?;
            write_string(out, &t.inner().naive_utc().format("%Y-%m-%dT%H:%M:%S%.fZ").to_string());
        }
        Kind::Duration => {
            let d = value.downcast_ref::<CelDuration>().ok_or_else(not_builtin)?.inner();
            write_string(out, &duration_text(d.num_seconds(), d.subsec_nanos()));
        }
        Kind::Type => write_string(out, value.downcast_ref::<CelType>().ok_or_else(not_builtin)?.name()),
        Kind::List => {
            let list = value.downcast_ref::<CelList>().ok_or_else(not_builtin)?;
            out.push(b'[');
            for (i, item) in list.inner().iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(out, item.as_ref()).map_err(|e| e.at(format!("[{i}]")))?;
            }
            out.push(b']');
        }
        Kind::Map => {
            let map = value.downcast_ref::<CelMap>().ok_or_else(not_builtin)?;
            let mut entries: Vec<(Cow<'_, str>, &dyn Val)> = map.inner().iter().map(|(k, v)| (key_text(k), v.as_ref())).collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            if let Some(pair) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
                return Err(NotJson::new(format!("two keys would both be written as {:?}", pair[0].0)));
            }
            out.push(b'{');
            for (i, (key, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, key);
                out.push(b':');
                write_json(out, *item).map_err(|e| e.at(format!("[{key:?}]")))?;
            }
            out.push(b'}');
        }
        Kind::Opaque if value.get_type().name() == "optional_type" => {
            return Err(NotJson::new("an optional value; unwrap it with .orValue(default) or .value()"));
        }
        _ => return Err(NotJson::new(format!("a value of type {}", value.get_type().name()))),
    }
    Ok(())
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    // Writing a &str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn key_text<'b>(key: &'b CelMapKey<'_>) -> Cow<'b, str> {
    match key {
        CelMapKey::String(s) => Cow::Borrowed(s.inner()),
        CelMapKey::Int(i) => i.inner().to_string().into(),
        CelMapKey::UInt(u) => u.inner().to_string().into(),
        CelMapKey::Bool(b) => b.inner().to_string().into(),
    }
}

/// A duration as the protobuf JSON mapping writes it: seconds, then 0, 3, 6 or 9 fraction
/// digits, then `s`.
fn duration_text(seconds: i64, nanos: i32) -> String {
    let sign = if seconds < 0 || nanos < 0 { "-" } else { "" };
    let (s, n) = (seconds.unsigned_abs(), nanos.unsigned_abs());
    if n == 0 {
        format!("{sign}{s}s")
    } else if n % 1_000_000 == 0 {
        format!("{sign}{s}.{:03}s", n / 1_000_000)
    } else if n % 1_000 == 0 {
        format!("{sign}{s}.{:06}s", n / 1_000)
    } else {
        format!("{sign}{s}.{n:09}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: &str = r#"{"order_id":"A-1001","status":"shipped","esc":"a\"b\u00e9","n":7,"big":18446744073709551615,"x":1.5,"items":[{"sku":"X-1","qty":2},{"sku":"Y-2","qty":1}],"none":null}"#;

    fn attributes() -> Vec<(String, String)> {
        vec![("region".to_owned(), "eu".to_owned())]
    }

    fn envelope<'a>(data: &'a str, attributes: &'a [(String, String)]) -> Envelope<'a> {
        Envelope {
            id: "1767225600000-0",
            event_type: "order.status_updated",
            tenant: "acme",
            created_at: "2026-01-01T00:00:00Z",
            data,
            attributes,
        }
    }

    fn filter(source: &str) -> Result<bool, EvalError> {
        let attributes = attributes();
        let evaluator = Evaluator::new();
        let bound = evaluator.bind(&envelope(DATA, &attributes)).unwrap();
        bound.filter(&Filter::compile(source).unwrap_or_else(|e| panic!("{source}: {e}")))
    }

    fn transform(source: &str) -> Result<String, EvalError> {
        let attributes = attributes();
        let evaluator = Evaluator::new();
        let bound = evaluator.bind(&envelope(DATA, &attributes)).unwrap();
        let t = Transform::compile(source).unwrap_or_else(|e| panic!("{source}: {e}"));
        bound.transform(&t).map(|body| String::from_utf8(body).unwrap())
    }

    #[test]
    fn syntax_errors_carry_line_column_and_a_caret() {
        let err = Filter::compile("event.data.").unwrap_err();
        let CompileError::Syntax(errors) = &err else { panic!("{err:?}") };
        assert_eq!((errors[0].line, errors[0].column), (1, 12));
        assert_eq!(err.to_string(), "syntax error at line 1, column 12: no viable alternative at input '.'\n| event.data.\n| ...........^");
        let err = Transform::compile("{\"a\": 1,\n  \"b\": }").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("syntax error at line 2, column 8: "), "{text}");
        assert!(text.contains("\n|   \"b\": }\n| .......^"), "{text}");
    }

    #[test]
    fn unknown_variables_are_refused_with_their_position() {
        let err = Filter::compile("event.type == 'a' &&\n evnt.data.status == 'x'").unwrap_err();
        assert_eq!(err, CompileError::UnknownVariable { name: "evnt".into(), line: 2, column: 2 });
        assert!(err.to_string().contains("the only variable is `event`"), "{err}");
        // What is not a variable: comprehension variables, types, function namespaces, has().
        for fine in [
            "event.data.items.all(i, i.qty > 0)",
            "event.data.items.exists(i, i.sku == 'X-1') && event.data.items.map(i, i.qty).all(q, q > 0)",
            "type(event.data) == map && type(event.data.n) == int",
            "optional.of(1).hasValue() && math.abs(-1) == 1",
            "base64.encode(b'a') == 'YQ=='",
            "has(event.data.status) && event.data.?status.orValue('') == 'shipped'",
            "event.attributes.region == 'eu'",
        ] {
            Filter::compile(fine).unwrap_or_else(|e| panic!("{fine}: {e}"));
        }
        // A comprehension variable does not leak out of its comprehension.
        assert!(matches!(Filter::compile("event.data.items.all(i, true) && i"), Err(CompileError::UnknownVariable { .. })));
    }

    #[test]
    fn filters_that_cannot_be_boolean_are_refused() {
        for (source, yields) in [
            ("'shipped'", "a string"),
            ("1 + 2", "the result of arithmetic"),
            ("[true]", "a list"),
            ("{'a': true}", "a map"),
            ("null", "null"),
        ] {
            assert_eq!(Filter::compile(source).unwrap_err(), CompileError::NotBoolean { yields }, "{source}");
            Transform::compile(source).unwrap();
        }
        Filter::compile("true").unwrap();
    }

    #[test]
    fn length_is_limited_and_messages_are_refused() {
        let long = format!("event.type == '{}'", "a".repeat(MAX_SOURCE_BYTES));
        assert_eq!(Filter::compile(&long).unwrap_err(), CompileError::TooLong { len: long.len() });
        let near = format!("event.type == '{}'", "a".repeat(MAX_SOURCE_BYTES - 20));
        Filter::compile(&near).unwrap();
        assert!(matches!(Transform::compile("google.protobuf.Duration{seconds: 1}"), Err(CompileError::MessageLiteral { .. })));
    }

    #[test]
    fn filters_see_the_envelope() {
        assert_eq!(filter(r#"event.data.status in ["shipped", "delivered"]"#), Ok(true));
        assert_eq!(filter(r#"event.data.status == "cancelled""#), Ok(false));
        assert_eq!(filter("event.type.startsWith('order.') && event.tenant == 'acme' && event.id == '1767225600000-0'"), Ok(true));
        assert_eq!(filter("timestamp(event.created_at) == timestamp('2026-01-01T00:00:00Z')"), Ok(true));
        assert_eq!(filter("event.attributes.region == 'eu' && !('zone' in event.attributes)"), Ok(true));
        assert_eq!(filter(r#"event.data.esc == "a\"bé""#), Ok(true));
        assert_eq!(filter("event.data.n == 7 && event.data.n > 6.5 && event.data.x > 1 && event.data.none == null"), Ok(true));
        assert_eq!(filter("event.data.big == 18446744073709551615u && type(event.data.big) == uint"), Ok(true));
        assert_eq!(filter("event.data.items.exists(i, i.sku == 'Y-2') && size(event.data.items) == 2"), Ok(true));
    }

    #[test]
    fn a_missing_field_is_an_error_with_a_hint_and_has_tests_for_it() {
        let err = filter("event.data.colour == 'red'").unwrap_err();
        assert_eq!(err, EvalError::Execution(ExecutionError::no_such_key("colour")));
        assert_eq!(
            err.to_string(),
            r#"no such key: "colour" (a missing field is an error: guard it with has(….colour), or give a default with ….?colour.orValue(…))"#
        );
        assert_eq!(filter("has(event.data.colour) && event.data.colour == 'red'"), Ok(false));
        assert_eq!(filter("event.data.?colour.orValue('none') == 'none'"), Ok(true));
    }

    #[test]
    fn a_filter_must_yield_a_bool_at_run_time() {
        assert_eq!(filter("event.data.status").unwrap_err(), EvalError::NotBoolean { got: "string".into() });
        assert!(matches!(filter("event.data.status + 1 == 2"), Err(EvalError::Execution(_))));
    }

    #[test]
    fn a_transform_becomes_json_with_sorted_keys() {
        assert_eq!(
            transform(r#"{"status": event.data.status, "order_id": event.data.order_id}"#).unwrap(),
            r#"{"order_id":"A-1001","status":"shipped"}"#
        );
        assert_eq!(transform("event.data.items.map(i, i.sku)").unwrap(), r#"["X-1","Y-2"]"#);
        assert_eq!(transform("event.data.esc").unwrap(), r#""a\"bé""#);
        assert_eq!(transform("event.data.big").unwrap(), "18446744073709551615");
        assert_eq!(transform("[event.data.n, event.data.x, 2.0, -3, null, true]").unwrap(), "[7,1.5,2.0,-3,null,true]");
        assert_eq!(transform("event.attributes").unwrap(), r#"{"region":"eu"}"#);
        assert_eq!(transform("{2: 'b', 1: 'a', true: 't'}").unwrap(), r#"{"1":"a","2":"b","true":"t"}"#);
        assert_eq!(transform("event.type.split('.')[0].upperAscii()").unwrap(), r#""ORDER""#);
        // The whole envelope, minus attributes, is the default body's content (keys sorted).
        assert_eq!(
            transform("{'id': event.id, 'type': event.type, 'data': {'n': event.data.n}}").unwrap(),
            r#"{"data":{"n":7},"id":"1767225600000-0","type":"order.status_updated"}"#
        );
    }

    #[test]
    fn non_json_values_convert_by_the_documented_rules() {
        assert_eq!(transform("b'abc'").unwrap(), r#""YWJj""#);
        assert_eq!(transform("timestamp('2026-01-01T00:00:00Z')").unwrap(), r#""2026-01-01T00:00:00Z""#);
        assert_eq!(transform("timestamp('2026-01-01T01:00:00.25+01:00')").unwrap(), r#""2026-01-01T00:00:00.250Z""#);
        assert_eq!(transform("timestamp('0001-01-01T00:00:00Z')").unwrap(), r#""0001-01-01T00:00:00Z""#);
        assert_eq!(transform("duration('90s')").unwrap(), r#""90s""#);
        assert_eq!(transform("duration('1.5s')").unwrap(), r#""1.500s""#);
        assert_eq!(transform("duration('-1ms')").unwrap(), r#""-0.001s""#);
        assert_eq!(transform("type(1)").unwrap(), r#""int""#);
        assert_eq!(duration_text(0, 1), "0.000000001s");
        assert_eq!(duration_text(3, 2_000), "3.000002s");
    }

    #[test]
    fn values_without_a_json_form_fail_saying_where() {
        let err = transform("{'a': [1.0, 0.0 / 0.0]}").unwrap_err();
        assert_eq!(err.to_string(), r#"its value cannot be written as JSON: the double NaN (JSON has no NaN or infinity) (at ["a"][1])"#);
        let err = transform("event.data.?status").unwrap_err();
        assert!(err.to_string().contains("an optional value") && err.to_string().ends_with("(at the top level)"), "{err}");
        let err = transform("{1: 'a', '1': 'b'}").unwrap_err();
        assert!(err.to_string().contains(r#"two keys would both be written as "1""#), "{err}");
    }

    #[test]
    fn apply_combines_filter_and_transform() {
        let attributes = attributes();
        let evaluator = Evaluator::new();
        let bound = evaluator.bind(&envelope(DATA, &attributes)).unwrap();
        let yes = Filter::compile("event.data.n == 7").unwrap();
        let no = Filter::compile("event.data.n == 8").unwrap();
        let broken = Filter::compile("event.data.nope").unwrap();
        let body = Transform::compile("{'n': event.data.n}").unwrap();
        let bad_body = Transform::compile("event.data.nope").unwrap();
        assert_eq!(bound.apply(None, None), Ok(Outcome::Envelope));
        assert_eq!(bound.apply(Some(&yes), None), Ok(Outcome::Envelope));
        assert_eq!(bound.apply(Some(&no), Some(&bad_body)), Ok(Outcome::Skip), "a filtered-out event is never transformed");
        assert_eq!(bound.apply(Some(&yes), Some(&body)), Ok(Outcome::Body(br#"{"n":7}"#.to_vec())));
        assert!(matches!(bound.apply(Some(&broken), Some(&body)), Err(Failure::Filter(_))));
        assert!(matches!(bound.apply(None, Some(&bad_body)), Err(Failure::Transform(_))));
        // The same binding serves any number of webhooks.
        assert_eq!(bound.apply(Some(&yes), Some(&body)), Ok(Outcome::Body(br#"{"n":7}"#.to_vec())));
    }

    #[test]
    fn data_of_any_json_shape_binds() {
        let attributes = Vec::new();
        let evaluator = Evaluator::new();
        for (data, check) in [
            ("[1,2]", "size(event.data) == 2"),
            ("\"text\"", "event.data == 'text'"),
            ("5", "event.data == 5"),
            ("null", "event.data == null"),
        ] {
            let bound = evaluator.bind(&envelope(data, &attributes)).unwrap();
            assert_eq!(bound.filter(&Filter::compile(check).unwrap()), Ok(true), "{data}");
        }
        assert!(matches!(evaluator.bind(&envelope("1e999", &attributes)), Err(EvalError::Data(_))));
    }

    /// Expressions of every construct, nested or chained `n` times.
    fn generated(n: usize) -> Vec<(&'static str, String)> {
        let nest = |open: &str, inner: &str, close: &str| format!("{}{inner}{}", open.repeat(n), close.repeat(n));
        vec![
            ("operator chain", format!("{} == 0", vec!["1"; n].join(" + "))),
            ("logical chain", vec!["event.type == 'x'"; n].join(" || ")),
            ("string concatenation", format!("{} == ''", vec!["event.type"; n].join(" + "))),
            ("parentheses", nest("(", "true", ")")),
            ("negation", format!("{}true", "!".repeat(n))),
            ("unary minus", format!("{}1 == 1", "-".repeat(n))),
            ("nested calls", format!("{} == 1", nest("int(", "1", ")"))),
            ("nested member calls", format!("'a'{} == 'a'", ".lowerAscii()".repeat(n))),
            ("nested lists", format!("size({}) == 1", nest("[", "1", "]"))),
            ("long list", format!("size([{}]) > 0", vec!["1"; n].join(", "))),
            ("nested maps", format!("size({}) == 1", nest("{'a': ", "1", "}"))),
            ("selection", format!("has(event.data{})", ".a".repeat(n))),
            ("ternaries", format!("{}true{}", "true ? (".repeat(n), ") : false".repeat(n))),
            ("nested map macros", format!("size({}) == 1", nest("[1].map(x, ", "x", ")"))),
            ("nested all/exists", nest("[1].all(x, [1].exists(y, ", "true", "))")),
            ("nested filters", format!("size({}) > 0", nest("[1].filter(x, size(", "[1]", ") > 0)"))),
        ]
    }

    #[test]
    fn limits_hold_for_every_construct() {
        // The parser runs on the control plane's threads (2 MiB stacks); evaluation on the
        // transformer's (EVAL_STACK_BYTES). Whatever the parser accepts is either refused with
        // a limit or evaluates without running out of stack.
        let compile_thread = std::thread::Builder::new().stack_size(2 << 20);
        let compiled = compile_thread
            .spawn(|| {
                let mut accepted = Vec::new();
                for n in [1, 8, 30, 31, 32, 33, 60, 63, 64, 65, 100, 400, 1000, 1365, 2000] {
                    for (construct, source) in generated(n) {
                        match Filter::compile(&source) {
                            Ok(filter) => accepted.push((construct, n, filter)),
                            Err(
                                CompileError::TooLong { .. }
                                | CompileError::TooDeep
                                | CompileError::TooManyNodes { .. }
                                | CompileError::Syntax(_),
                            ) => {}
                            Err(other) => panic!("{construct} × {n}: {other}"),
                        }
                    }
                }
                accepted
            })
            .unwrap()
            .join()
            .expect("compiling never overflows the stack");
        for construct in
            ["operator chain", "nested calls", "nested lists", "nested maps", "nested map macros", "ternaries", "string concatenation"]
        {
            assert!(compiled.iter().any(|(c, n, _)| *c == construct && *n == 8), "{construct} × 8 is accepted");
            assert!(!compiled.iter().any(|(c, n, _)| *c == construct && *n == 1000), "{construct} × 1000 is refused");
        }
        let eval_thread = std::thread::Builder::new().stack_size(EVAL_STACK_BYTES);
        eval_thread
            .spawn(move || {
                let attributes = attributes();
                let evaluator = Evaluator::new();
                let bound = evaluator.bind(&envelope(DATA, &attributes)).unwrap();
                for (construct, n, filter) in &compiled {
                    // Any answer will do; only running out of stack or budget would not.
                    if let Err(EvalError::OverBudget(_) | EvalError::Internal(_)) = bound.filter(filter) {
                        panic!("{construct} × {n}");
                    }
                }
            })
            .unwrap()
            .join()
            .expect("evaluating never overflows the stack");
    }

    #[test]
    fn the_reported_crash_is_refused_naming_the_limit() {
        let source = format!("{} == 0", vec!["1"; 1500].join("+"));
        let err = Filter::compile(&source).unwrap_err();
        assert_eq!(err, CompileError::TooDeep);
        assert!(err.to_string().contains(&format!("more than {MAX_DEPTH} levels deep")), "{err}");
        let err = Transform::compile(&vec!["event.type"; 300].join("+")).unwrap_err();
        assert_eq!(err, CompileError::TooDeep);
        let wide = format!("[{}]", vec!["[1, 2, 3]"; 300].join(","));
        let err = Transform::compile(&wide).unwrap_err();
        assert!(matches!(err, CompileError::TooManyNodes { nodes } if nodes > MAX_NODES), "{err:?}");
        assert!(err.to_string().contains("at most 1000 are allowed (the limit on node count)"), "{err}");
    }

    /// Runs `test` on a thread with the stack the transformer has.
    fn on_eval_stack(test: impl FnOnce() + Send + 'static) {
        let thread = std::thread::Builder::new().stack_size(EVAL_STACK_BYTES).spawn(test).unwrap();
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    }

    #[test]
    fn evaluation_stops_at_its_budget() {
        on_eval_stack(evaluation_stops_at_its_budget_here);
    }

    fn evaluation_stops_at_its_budget_here() {
        for (source, spent) in [
            ("lists.range(1000000).map(i, lists.range(1000000).map(j, j))", Spent::Steps),
            ("lists.range(1000000).all(i, lists.range(100).exists(j, j < 0) == false)", Spent::Steps),
            ("lists.range(100000).distinct()", Spent::Steps),
            ("lists.range(10000).map(i, 'x').join(lists.range(10000).map(i, 'y').join())", Spent::Bytes),
            ("lists.range(20000).map(i, 'x').join().replace('x', lists.range(20000).map(i, 'y').join())", Spent::Bytes),
            ("lists.range(400000).map(i, event.data.order_id + event.data.order_id + event.data.order_id + event.data.order_id + event.data.order_id)", Spent::Bytes),
            // Doubling a string with nested comprehensions: 2^14 times the first.
            (
                &({
                    let mut e = "lists.range(1000).map(i, 'abcdefgh').join()".to_owned();
                    for _ in 0..14 {
                        e = format!("[{e}].map(s, s + s)[0]");
                    }
                    e
                }),
                Spent::Bytes,
            ),
        ] {
            let got = transform(source).map(|body| body.len());
            assert_eq!(got, Err(EvalError::OverBudget(spent)), "{source}");
        }
        // An exists() that absorbs the error still fails: the budget ran out.
        assert_eq!(filter("lists.range(1000000).map(i, i).size() > 0 || true"), Err(EvalError::OverBudget(Spent::Steps)));
        // Plenty is left for real work, and the budget is fresh for every evaluation.
        for _ in 0..3 {
            assert_eq!(transform("size(lists.range(100000).filter(i, i % 2 == 0))").unwrap(), "50000");
        }
        assert_eq!(transform("'a-b-a'.replace('a', 'xy')").unwrap(), r#""xy-b-xy""#);
        assert_eq!(transform("'a-b-a'.replace('a', 'xy', 1)").unwrap(), r#""xy-b-a""#);
        assert_eq!(transform("['a', 'b'].join('/') + ['c'].join()").unwrap(), r#""a/bc""#);
        assert_eq!(transform("[3, 1, 2, 1].distinct().sort()").unwrap(), "[1,2,3]");
        assert_eq!(transform("event.data.items.sortBy(i, i.qty).map(i, i.sku)").unwrap(), r#"["Y-2","X-1"]"#);
        assert!(EvalError::OverBudget(Spent::Steps).to_string().starts_with("the expression needs more than 1000000 steps"));
        // Times from input at the edge of the representable: an error, never a crash.
        for source in [
            "timestamp('9999-12-31T23:59:59Z') + duration('87600h')",
            "timestamp('0001-01-01T00:00:00Z') - duration('87600h')",
            "timestamp('10000-01-01T00:00:00Z')",
            "timestamp(253402300800)",
        ] {
            if let Ok(body) = transform(source) {
                assert!(body.starts_with('"'), "{source}: {body}");
            }
        }
    }

    #[test]
    fn long_errors_are_cut() {
        let text = truncate_chars("é".repeat(600), 512);
        assert_eq!(text.chars().count(), 513);
        assert!(text.ends_with('…'));
        assert_eq!(truncate_chars("short".into(), 512), "short");
    }
}

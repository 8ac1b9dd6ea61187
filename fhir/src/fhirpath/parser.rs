//! Recursive-descent parser producing the FHIRPath syntax tree.
//!
//! Operator precedence follows the FHIRPath Normative Release 1 grammar, tightest first:
//! invocation and indexer, unary sign, `* / div mod`, `+ - &`, `is as`, `|`, `< > <= >=`,
//! `= ~ != !~`, `in contains`, `and`, `xor or`, `implies`. Function names and argument counts
//! are checked here, so an unknown function fails at parse time rather than on first use.

use super::FhirPathError;
use super::lexer::{Spanned, Token, tokenize};
use super::types::MemberCache;
use rust_decimal::Decimal;
use std::str::FromStr;

/// A literal value written in the expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Literal {
    Boolean(bool),
    Integer(i64),
    Decimal(Decimal),
    String(String),
    /// A date, dateTime or time literal without its `@`.
    DateTime(String),
    Quantity {
        value: Decimal,
        unit: String,
    },
}

/// A type named in `is`, `as` or `ofType`, such as `FHIR.Quantity` or `System.String`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TypeSpec {
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinaryOp {
    Mul,
    Div,
    IntDiv,
    Mod,
    Add,
    Sub,
    Concat,
    Union,
    Lt,
    Gt,
    Le,
    Ge,
    Eq,
    Ne,
    Equiv,
    NotEquiv,
    In,
    Contains,
    And,
    Or,
    Xor,
    Implies,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeOp {
    Is,
    As,
}

/// Functions known to the evaluator, resolved by name when parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Function {
    Empty,
    Exists,
    All,
    AllTrue,
    AnyTrue,
    AllFalse,
    AnyFalse,
    Where,
    Select,
    Repeat,
    OfType,
    As,
    Is,
    First,
    Last,
    Tail,
    Skip,
    Take,
    Single,
    Count,
    Distinct,
    IsDistinct,
    Union,
    Combine,
    Intersect,
    Exclude,
    Not,
    Iif,
    Resolve,
    Extension,
    HasValue,
    Children,
    Descendants,
    Join,
    Substring,
    StartsWith,
    EndsWith,
    Contains,
    IndexOf,
    Matches,
    Replace,
    ReplaceMatches,
    Length,
    Upper,
    Lower,
    Trim,
    Split,
    ToChars,
    ToString,
    ToInteger,
    ToDecimal,
    ToBoolean,
    ConvertsToString,
    ConvertsToInteger,
    ConvertsToDecimal,
    ConvertsToBoolean,
    GetResourceKey,
    GetReferenceKey,
    LowBoundary,
    HighBoundary,
    Today,
    Now,
    Trace,
    Abs,
    Ceiling,
    Floor,
    Round,
    SubsetOf,
    SupersetOf,
}

impl Function {
    /// Looks up a function by name, returning it with its minimum and maximum argument count.
    fn lookup(name: &str) -> Option<(Function, usize, usize)> {
        use Function::*;
        let entry = match name {
            "empty" => (Empty, 0, 0),
            "exists" => (Exists, 0, 1),
            "all" => (All, 1, 1),
            "allTrue" => (AllTrue, 0, 0),
            "anyTrue" => (AnyTrue, 0, 0),
            "allFalse" => (AllFalse, 0, 0),
            "anyFalse" => (AnyFalse, 0, 0),
            "where" => (Where, 1, 1),
            "select" => (Select, 1, 1),
            "repeat" => (Repeat, 1, 1),
            "ofType" => (OfType, 1, 1),
            "as" => (As, 1, 1),
            "is" => (Is, 1, 1),
            "first" => (First, 0, 0),
            "last" => (Last, 0, 0),
            "tail" => (Tail, 0, 0),
            "skip" => (Skip, 1, 1),
            "take" => (Take, 1, 1),
            "single" => (Single, 0, 0),
            "count" => (Count, 0, 0),
            "distinct" => (Distinct, 0, 0),
            "isDistinct" => (IsDistinct, 0, 0),
            "union" => (Union, 1, 1),
            "combine" => (Combine, 1, 1),
            "intersect" => (Intersect, 1, 1),
            "exclude" => (Exclude, 1, 1),
            "subsetOf" => (SubsetOf, 1, 1),
            "supersetOf" => (SupersetOf, 1, 1),
            "not" => (Not, 0, 0),
            "iif" => (Iif, 2, 3),
            "resolve" => (Resolve, 0, 0),
            "extension" => (Extension, 1, 1),
            "hasValue" => (HasValue, 0, 0),
            "children" => (Children, 0, 0),
            "descendants" => (Descendants, 0, 0),
            "join" => (Join, 0, 1),
            "substring" => (Substring, 1, 2),
            "startsWith" => (StartsWith, 1, 1),
            "endsWith" => (EndsWith, 1, 1),
            "contains" => (Contains, 1, 1),
            "indexOf" => (IndexOf, 1, 1),
            "matches" => (Matches, 1, 1),
            "replace" => (Replace, 2, 2),
            "replaceMatches" => (ReplaceMatches, 2, 2),
            "length" => (Length, 0, 0),
            "upper" => (Upper, 0, 0),
            "lower" => (Lower, 0, 0),
            "trim" => (Trim, 0, 0),
            "split" => (Split, 1, 1),
            "toChars" => (ToChars, 0, 0),
            "toString" => (ToString, 0, 0),
            "toInteger" => (ToInteger, 0, 0),
            "toDecimal" => (ToDecimal, 0, 0),
            "toBoolean" => (ToBoolean, 0, 0),
            "convertsToString" => (ConvertsToString, 0, 0),
            "convertsToInteger" => (ConvertsToInteger, 0, 0),
            "convertsToDecimal" => (ConvertsToDecimal, 0, 0),
            "convertsToBoolean" => (ConvertsToBoolean, 0, 0),
            "getResourceKey" => (GetResourceKey, 0, 0),
            "getReferenceKey" => (GetReferenceKey, 0, 1),
            "lowBoundary" => (LowBoundary, 0, 1),
            "highBoundary" => (HighBoundary, 0, 1),
            "today" => (Today, 0, 0),
            "now" => (Now, 0, 0),
            "trace" => (Trace, 1, 2),
            "abs" => (Abs, 0, 0),
            "ceiling" => (Ceiling, 0, 0),
            "floor" => (Floor, 0, 0),
            "round" => (Round, 0, 1),
            _ => return None,
        };
        Some(entry)
    }

    /// Returns true when the argument at `index` is a type specifier rather than an expression.
    fn takes_type(self, index: usize) -> bool {
        matches!(self, Function::OfType | Function::As | Function::Is)
            || (self == Function::GetReferenceKey && index == 0)
    }
}

/// A function argument: an expression evaluated per the function's rules, or a type name.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    Expr(Expr),
    Type(TypeSpec),
}

/// A node of the FHIRPath syntax tree.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    /// The empty collection `{}`.
    Empty,
    Literal(Literal),
    This,
    IndexVar,
    Total,
    /// An external constant such as `%resource`.
    Constant {
        name: String,
        pos: usize,
    },
    /// Child navigation; with no target it applies to the focus (`$this`), where a leading
    /// type name such as `Patient` also filters the focus by type.
    Member {
        target: Option<Box<Expr>>,
        name: String,
        /// Model entry for `name` under the first parent type it is navigated from.
        cache: MemberCache,
    },
    Call {
        target: Option<Box<Expr>>,
        function: Function,
        args: Vec<Arg>,
        pos: usize,
    },
    Index {
        target: Box<Expr>,
        index: Box<Expr>,
        pos: usize,
    },
    Negate {
        operand: Box<Expr>,
        pos: usize,
    },
    Binary {
        op: BinaryOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
        pos: usize,
    },
    TypeOp {
        op: TypeOp,
        target: Box<Expr>,
        spec: TypeSpec,
        pos: usize,
    },
    /// A subtree that several expressions of an [`ExpressionSet`](super::ExpressionSet)
    /// contain. Its result on the set's focus is computed once per evaluation of the set.
    Shared {
        id: usize,
        inner: Box<Expr>,
    },
}

impl Expr {
    /// Pushes the name of every external constant (`%name`) the expression refers to.
    pub(crate) fn collect_constants<'e>(&'e self, out: &mut Vec<&'e str>) {
        match self {
            Expr::Constant { name, .. } => out.push(name),
            Expr::Member { target, .. } => {
                if let Some(target) = target {
                    target.collect_constants(out);
                }
            }
            Expr::Call { target, args, .. } => {
                if let Some(target) = target {
                    target.collect_constants(out);
                }
                for arg in args {
                    if let Arg::Expr(expr) = arg {
                        expr.collect_constants(out);
                    }
                }
            }
            Expr::Index { target, index, .. } => {
                target.collect_constants(out);
                index.collect_constants(out);
            }
            Expr::Negate { operand, .. } => operand.collect_constants(out),
            Expr::Binary { lhs, rhs, .. } => {
                lhs.collect_constants(out);
                rhs.collect_constants(out);
            }
            Expr::TypeOp { target, .. } => target.collect_constants(out),
            Expr::Shared { inner, .. } => inner.collect_constants(out),
            Expr::Empty | Expr::Literal(_) | Expr::This | Expr::IndexVar | Expr::Total => {}
        }
    }

    /// Writes a description of the subtree that ignores source offsets, so two subtrees
    /// written alike in different places describe the same way.
    pub(crate) fn write_shape(&self, out: &mut String) {
        use std::fmt::Write;
        // Writing to a String cannot fail, so the results of `write!` are ignored.
        match self {
            Expr::Empty => out.push_str("{}"),
            Expr::Literal(literal) => {
                let _ = write!(out, "{literal:?}");
            }
            Expr::This => out.push_str("$this"),
            Expr::IndexVar => out.push_str("$index"),
            Expr::Total => out.push_str("$total"),
            Expr::Constant { name, .. } => {
                let _ = write!(out, "%{name:?}");
            }
            Expr::Member { target, name, .. } => {
                out.push('(');
                if let Some(target) = target {
                    target.write_shape(out);
                }
                let _ = write!(out, ".{name:?})");
            }
            Expr::Call {
                target,
                function,
                args,
                ..
            } => {
                out.push('(');
                if let Some(target) = target {
                    target.write_shape(out);
                }
                let _ = write!(out, ".{function:?}(");
                for arg in args {
                    match arg {
                        Arg::Expr(expr) => expr.write_shape(out),
                        Arg::Type(spec) => {
                            let _ = write!(out, "{spec:?}");
                        }
                    }
                    out.push(',');
                }
                out.push_str("))");
            }
            Expr::Index { target, index, .. } => {
                out.push('(');
                target.write_shape(out);
                out.push('[');
                index.write_shape(out);
                out.push_str("])");
            }
            Expr::Negate { operand, .. } => {
                out.push_str("(-");
                operand.write_shape(out);
                out.push(')');
            }
            Expr::Binary { op, lhs, rhs, .. } => {
                out.push('(');
                lhs.write_shape(out);
                let _ = write!(out, " {op:?} ");
                rhs.write_shape(out);
                out.push(')');
            }
            Expr::TypeOp {
                op, target, spec, ..
            } => {
                out.push('(');
                target.write_shape(out);
                let _ = write!(out, " {op:?} {spec:?})");
            }
            Expr::Shared { inner, .. } => inner.write_shape(out),
        }
    }
}

/// Parses a whole expression, rejecting trailing tokens.
pub(crate) fn parse(src: &str) -> Result<Expr, FhirPathError> {
    let tokens = tokenize(src)?;
    let mut parser = Parser { tokens, at: 0 };
    let expr = parser.expression(0)?;
    let next = parser.peek();
    if next.token != Token::End {
        return Err(FhirPathError::syntax(
            next.pos,
            format!("unexpected {}", describe(&next.token)),
        ));
    }
    Ok(expr)
}

struct Parser {
    tokens: Vec<Spanned>,
    at: usize,
}

/// Binding strength of each binary operator, higher binds tighter.
fn binary_precedence(token: &Token) -> Option<(u8, BinaryOp)> {
    let entry = match token {
        Token::Symbol("*") => (10, BinaryOp::Mul),
        Token::Symbol("/") => (10, BinaryOp::Div),
        Token::Identifier(s) if s == "div" => (10, BinaryOp::IntDiv),
        Token::Identifier(s) if s == "mod" => (10, BinaryOp::Mod),
        Token::Symbol("+") => (9, BinaryOp::Add),
        Token::Symbol("-") => (9, BinaryOp::Sub),
        Token::Symbol("&") => (9, BinaryOp::Concat),
        Token::Symbol("|") => (7, BinaryOp::Union),
        Token::Symbol("<") => (6, BinaryOp::Lt),
        Token::Symbol(">") => (6, BinaryOp::Gt),
        Token::Symbol("<=") => (6, BinaryOp::Le),
        Token::Symbol(">=") => (6, BinaryOp::Ge),
        Token::Symbol("=") => (5, BinaryOp::Eq),
        Token::Symbol("!=") => (5, BinaryOp::Ne),
        Token::Symbol("~") => (5, BinaryOp::Equiv),
        Token::Symbol("!~") => (5, BinaryOp::NotEquiv),
        Token::Identifier(s) if s == "in" => (4, BinaryOp::In),
        Token::Identifier(s) if s == "contains" => (4, BinaryOp::Contains),
        Token::Identifier(s) if s == "and" => (3, BinaryOp::And),
        Token::Identifier(s) if s == "or" => (2, BinaryOp::Or),
        Token::Identifier(s) if s == "xor" => (2, BinaryOp::Xor),
        Token::Identifier(s) if s == "implies" => (1, BinaryOp::Implies),
        _ => return None,
    };
    Some(entry)
}

/// Precedence of `is` and `as`, between additive operators and union.
const TYPE_OP_PRECEDENCE: u8 = 8;

fn describe(token: &Token) -> String {
    match token {
        Token::Identifier(s) => format!("identifier '{s}'"),
        Token::String(s) => format!("string '{s}'"),
        Token::Number(s) => format!("number {s}"),
        Token::DateTime(s) => format!("date/time @{s}"),
        Token::Constant(s) => format!("constant %{s}"),
        Token::Special(s) => format!("${s}"),
        Token::Symbol(s) => format!("'{s}'"),
        Token::End => "end of expression".to_string(),
    }
}

impl Parser {
    fn peek(&self) -> &Spanned {
        // The token list always ends with `Token::End`, and `advance` never moves past it.
        &self.tokens[self.at.min(self.tokens.len() - 1)]
    }

    fn advance(&mut self) -> Spanned {
        let token = self.peek().clone();
        if self.at < self.tokens.len() - 1 {
            self.at += 1;
        }
        token
    }

    fn expect(&mut self, symbol: &'static str) -> Result<(), FhirPathError> {
        let next = self.advance();
        if next.token == Token::Symbol(symbol) {
            Ok(())
        } else {
            Err(FhirPathError::syntax(
                next.pos,
                format!("expected '{symbol}' but found {}", describe(&next.token)),
            ))
        }
    }

    /// Precedence climbing over binary and type operators.
    fn expression(&mut self, min_precedence: u8) -> Result<Expr, FhirPathError> {
        let mut lhs = self.unary()?;
        loop {
            let next = self.peek().clone();
            if let Token::Identifier(word) = &next.token
                && (word == "is" || word == "as")
                && TYPE_OP_PRECEDENCE >= min_precedence
            {
                self.advance();
                let spec = self.type_spec()?;
                let op = if word == "is" { TypeOp::Is } else { TypeOp::As };
                lhs = Expr::TypeOp {
                    op,
                    target: Box::new(lhs),
                    spec,
                    pos: next.pos,
                };
                continue;
            }
            let Some((precedence, op)) = binary_precedence(&next.token) else {
                break;
            };
            if precedence < min_precedence {
                break;
            }
            self.advance();
            let rhs = self.expression(precedence + 1)?;
            lhs = Expr::Binary {
                op,
                lhs: Box::new(lhs),
                rhs: Box::new(rhs),
                pos: next.pos,
            };
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Expr, FhirPathError> {
        match self.peek().token {
            Token::Symbol("-") => {
                let pos = self.advance().pos;
                let inner = self.unary()?;
                Ok(match inner {
                    Expr::Literal(Literal::Integer(i)) => Expr::Literal(Literal::Integer(-i)),
                    Expr::Literal(Literal::Decimal(d)) => Expr::Literal(Literal::Decimal(-d)),
                    other => Expr::Negate {
                        operand: Box::new(other),
                        pos,
                    },
                })
            }
            Token::Symbol("+") => {
                self.advance();
                self.unary()
            }
            _ => self.postfix(),
        }
    }

    fn postfix(&mut self) -> Result<Expr, FhirPathError> {
        let mut expr = self.term()?;
        loop {
            match self.peek().token {
                Token::Symbol(".") => {
                    self.advance();
                    expr = self.invocation(Some(Box::new(expr)))?;
                }
                Token::Symbol("[") => {
                    let pos = self.advance().pos;
                    let index = self.expression(0)?;
                    self.expect("]")?;
                    expr = Expr::Index {
                        target: Box::new(expr),
                        index: Box::new(index),
                        pos,
                    };
                }
                _ => return Ok(expr),
            }
        }
    }

    fn term(&mut self) -> Result<Expr, FhirPathError> {
        let next = self.peek().clone();
        match next.token {
            Token::String(s) => {
                self.advance();
                Ok(Expr::Literal(Literal::String(s)))
            }
            Token::Number(text) => {
                self.advance();
                self.number(&text, next.pos)
            }
            Token::DateTime(text) => {
                self.advance();
                Ok(Expr::Literal(Literal::DateTime(text)))
            }
            Token::Constant(name) => {
                self.advance();
                Ok(Expr::Constant {
                    name,
                    pos: next.pos,
                })
            }
            Token::Special(name) => {
                self.advance();
                Ok(match name.as_str() {
                    "this" => Expr::This,
                    "index" => Expr::IndexVar,
                    _ => Expr::Total,
                })
            }
            Token::Symbol("(") => {
                self.advance();
                let inner = self.expression(0)?;
                self.expect(")")?;
                Ok(inner)
            }
            Token::Symbol("{") => {
                self.advance();
                self.expect("}")?;
                Ok(Expr::Empty)
            }
            Token::Identifier(ref word) if word == "true" || word == "false" => {
                self.advance();
                Ok(Expr::Literal(Literal::Boolean(word == "true")))
            }
            Token::Identifier(_) => self.invocation(None),
            other => Err(FhirPathError::syntax(
                next.pos,
                format!("expected an expression but found {}", describe(&other)),
            )),
        }
    }

    fn number(&mut self, text: &str, pos: usize) -> Result<Expr, FhirPathError> {
        let value = if text.contains('.') {
            Decimal::from_str(text).map(Literal::Decimal).ok()
        } else {
            text.parse::<i64>().ok().map(Literal::Integer)
        }
        .ok_or_else(|| FhirPathError::syntax(pos, format!("number {text} is out of range")))?;
        if let Token::String(unit) = &self.peek().token {
            let unit = unit.clone();
            self.advance();
            let value = match value {
                Literal::Integer(i) => Decimal::from(i),
                Literal::Decimal(d) => d,
                _ => Decimal::ZERO,
            };
            return Ok(Expr::Literal(Literal::Quantity { value, unit }));
        }
        Ok(Expr::Literal(value))
    }

    /// Parses `name` or `name(args)` after a dot or at the start of a term.
    fn invocation(&mut self, target: Option<Box<Expr>>) -> Result<Expr, FhirPathError> {
        let next = self.advance();
        let name = match next.token {
            Token::Identifier(name) => name,
            other => {
                return Err(FhirPathError::syntax(
                    next.pos,
                    format!("expected a name but found {}", describe(&other)),
                ));
            }
        };
        if self.peek().token != Token::Symbol("(") {
            return Ok(Expr::Member {
                target,
                name,
                cache: MemberCache::default(),
            });
        }
        self.advance();
        let (function, min, max) = Function::lookup(&name)
            .ok_or_else(|| FhirPathError::syntax(next.pos, format!("unknown function '{name}'")))?;
        let mut args = Vec::new();
        if self.peek().token != Token::Symbol(")") {
            loop {
                let arg = if function.takes_type(args.len()) {
                    Arg::Type(self.type_spec()?)
                } else {
                    Arg::Expr(self.expression(0)?)
                };
                args.push(arg);
                if self.peek().token == Token::Symbol(",") {
                    self.advance();
                    continue;
                }
                break;
            }
        }
        self.expect(")")?;
        if args.len() < min || args.len() > max {
            let expected = if min == max {
                format!("{min}")
            } else {
                format!("{min} to {max}")
            };
            return Err(FhirPathError::syntax(
                next.pos,
                format!(
                    "function '{name}' takes {expected} arguments but was given {}",
                    args.len()
                ),
            ));
        }
        Ok(Expr::Call {
            target,
            function,
            args,
            pos: next.pos,
        })
    }

    /// Parses a possibly qualified type name such as `Quantity` or `FHIR.Quantity`.
    fn type_spec(&mut self) -> Result<TypeSpec, FhirPathError> {
        let first = self.advance();
        let Token::Identifier(first_name) = first.token else {
            return Err(FhirPathError::syntax(
                first.pos,
                format!("expected a type name but found {}", describe(&first.token)),
            ));
        };
        let qualified = (first_name == "FHIR" || first_name == "System")
            && self.peek().token == Token::Symbol(".")
            && matches!(
                self.tokens.get(self.at + 1),
                Some(Spanned {
                    token: Token::Identifier(_),
                    ..
                })
            );
        if qualified {
            self.advance();
            if let Token::Identifier(name) = self.advance().token {
                return Ok(TypeSpec {
                    namespace: Some(first_name),
                    name,
                });
            }
        }
        Ok(TypeSpec {
            namespace: None,
            name: first_name,
        })
    }
}

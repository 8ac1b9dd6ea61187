//! Evaluation of several expressions on one focus, computing shared sub-paths once.
//!
//! The columns of a view often repeat a path prefix: `code.coding.first().system`,
//! `code.coding.first().code` and `code.coding.first().display`. An [`ExpressionSet`] marks
//! every path, function call and indexer that occurs more than once across its expressions.
//! During one evaluation of the set, the first result of each marked subtree on the set's
//! focus is kept for the others to reuse. A marked subtree evaluated on another focus (inside
//! `where()`, for example) is evaluated normally.

use std::collections::HashMap;

use super::eval::{Context, Memo};
use super::parser::{Arg, Expr, Function};
use super::{Expression, FhirPathError, Item, Variables};

/// Expressions evaluated together on the same focus, sharing common sub-paths.
#[derive(Debug, Clone)]
pub struct ExpressionSet {
    expressions: Vec<Expression>,
    shared: usize,
}

impl ExpressionSet {
    /// Builds a set from parsed expressions, keeping their order.
    pub fn new(expressions: Vec<Expression>) -> ExpressionSet {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for expression in &expressions {
            count_candidates(&expression.root, &mut counts);
        }
        let mut ids = HashMap::new();
        let expressions = expressions
            .into_iter()
            .map(|expression| Expression {
                source: expression.source,
                root: mark_shared(expression.root, &counts, &mut ids),
            })
            .collect();
        ExpressionSet {
            expressions,
            shared: ids.len(),
        }
    }

    /// Returns the expressions, in the order given to [`ExpressionSet::new`].
    pub fn expressions(&self) -> &[Expression] {
        &self.expressions
    }

    /// Returns the number of distinct subtrees the expressions share.
    pub fn shared_count(&self) -> usize {
        self.shared
    }

    /// Evaluates every expression with `focus` as `$this` and `root` as `%resource`,
    /// returning the results in order. On the first failure it returns the index of the
    /// failing expression with its error.
    pub fn evaluate_all<'a>(
        &self,
        root: &Item<'a>,
        focus: &[Item<'a>],
        variables: &Variables<'a>,
    ) -> Result<Vec<Vec<Item<'a>>>, (usize, FhirPathError)> {
        let memo = Memo::new(focus, self.shared);
        let context = Context::with_memo(root.clone(), variables, &memo);
        let mut results = Vec::with_capacity(self.expressions.len());
        for (index, expression) in self.expressions.iter().enumerate() {
            let result = context
                .evaluate(&expression.root, focus)
                .map_err(|error| (index, error))?;
            results.push(result);
        }
        Ok(results)
    }
}

/// Returns true for the nodes whose result is worth keeping: navigation, indexers and
/// calls of functions that give the same result every time on the same input.
fn is_candidate(expr: &Expr) -> bool {
    match expr {
        Expr::Member { .. } | Expr::Index { .. } => true,
        Expr::Call { function, .. } => {
            !matches!(function, Function::Now | Function::Today | Function::Trace)
        }
        _ => false,
    }
}

fn shape(expr: &Expr) -> String {
    let mut out = String::new();
    expr.write_shape(&mut out);
    out
}

fn count_candidates(expr: &Expr, counts: &mut HashMap<String, usize>) {
    if is_candidate(expr) {
        *counts.entry(shape(expr)).or_default() += 1;
    }
    for child in children(expr) {
        count_candidates(child, counts);
    }
}

fn children(expr: &Expr) -> Vec<&Expr> {
    match expr {
        Expr::Member { target, .. } => target.as_deref().into_iter().collect(),
        Expr::Call { target, args, .. } => target
            .as_deref()
            .into_iter()
            .chain(args.iter().filter_map(|arg| match arg {
                Arg::Expr(expr) => Some(expr),
                Arg::Type(_) => None,
            }))
            .collect(),
        Expr::Index { target, index, .. } => vec![target, index],
        Expr::Negate { operand, .. } => vec![operand],
        Expr::Binary { lhs, rhs, .. } => vec![lhs, rhs],
        Expr::TypeOp { target, .. } => vec![target],
        Expr::Shared { inner, .. } => vec![inner],
        Expr::Empty | Expr::Literal(_) | Expr::This | Expr::IndexVar | Expr::Total => Vec::new(),
        Expr::Constant { .. } => Vec::new(),
    }
}

/// Rebuilds `expr`, wrapping each candidate subtree that occurs more than once in
/// [`Expr::Shared`], with one id per distinct shape.
fn mark_shared(
    expr: Expr,
    counts: &HashMap<String, usize>,
    ids: &mut HashMap<String, usize>,
) -> Expr {
    let key = is_candidate(&expr).then(|| shape(&expr));
    let mark = |expr: Expr, ids: &mut HashMap<String, usize>| mark_shared(expr, counts, ids);
    let rebuilt = match expr {
        Expr::Member {
            target,
            name,
            cache,
        } => Expr::Member {
            target: target.map(|t| Box::new(mark(*t, ids))),
            name,
            cache,
        },
        Expr::Call {
            target,
            function,
            args,
            pos,
        } => Expr::Call {
            target: target.map(|t| Box::new(mark(*t, ids))),
            function,
            args: args
                .into_iter()
                .map(|arg| match arg {
                    Arg::Expr(expr) => Arg::Expr(mark(expr, ids)),
                    other => other,
                })
                .collect(),
            pos,
        },
        Expr::Index { target, index, pos } => Expr::Index {
            target: Box::new(mark(*target, ids)),
            index: Box::new(mark(*index, ids)),
            pos,
        },
        Expr::Negate { operand, pos } => Expr::Negate {
            operand: Box::new(mark(*operand, ids)),
            pos,
        },
        Expr::Binary { op, lhs, rhs, pos } => Expr::Binary {
            op,
            lhs: Box::new(mark(*lhs, ids)),
            rhs: Box::new(mark(*rhs, ids)),
            pos,
        },
        Expr::TypeOp {
            op,
            target,
            spec,
            pos,
        } => Expr::TypeOp {
            op,
            target: Box::new(mark(*target, ids)),
            spec,
            pos,
        },
        other => other,
    };
    match key {
        Some(key) if counts.get(&key).is_some_and(|count| *count > 1) => {
            let next = ids.len();
            let id = *ids.entry(key).or_insert(next);
            Expr::Shared {
                id,
                inner: Box::new(rebuilt),
            }
        }
        _ => rebuilt,
    }
}

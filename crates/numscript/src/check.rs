//! Cheap static checks over a syntactically valid script.

use std::collections::HashMap;

use crate::parser::RawDiagnostic;
use crate::syntax::*;
use crate::{FeatureFlags, Severity};

const TYPES: [&str; 6] = [
    "monetary", "account", "portion", "asset", "number", "string",
];

struct Checker<'s> {
    source: &'s str,
    declared: HashMap<&'s str, Span>,
    diagnostics: Vec<RawDiagnostic>,
}

pub(crate) fn check(source: &str, ast: &Ast) -> Vec<RawDiagnostic> {
    let mut checker = Checker {
        source,
        declared: HashMap::new(),
        diagnostics: Vec::new(),
    };
    for feature in &ast.features {
        let name = feature.text(source);
        if !FeatureFlags::ALL_NAMES.contains(&name) {
            checker.error(*feature, format!("unknown feature flag `{name}`"));
        }
    }
    for decl in &ast.vars {
        let ty = decl.ty.text(source);
        if !TYPES.contains(&ty) {
            checker.error(
                decl.ty,
                format!(
                    "unknown type `{ty}` (expected one of: {})",
                    TYPES.join(", ")
                ),
            );
        }
        let name = &decl.name.text(source)[1..];
        if let Some(origin) = &decl.origin {
            match &origin.kind {
                ExprKind::Call(call) => {
                    for arg in &call.args {
                        checker.expr(arg);
                    }
                    checker.call_arity(call);
                    if matches!(
                        call.function,
                        Function::SetTxMeta | Function::SetAccountMeta
                    ) {
                        checker.error(
                            call.name,
                            format!(
                                "`{}` can only be used as a statement",
                                call.name.text(source)
                            ),
                        );
                    }
                }
                _ => checker.expr(origin),
            }
        }
        if checker.declared.insert(name, decl.name).is_some() {
            checker.warning(decl.name, format!("variable `${name}` is declared twice"));
        }
    }
    for statement in &ast.statements {
        match statement {
            Statement::Send {
                value,
                source,
                destination,
            } => {
                checker.sent_value(value);
                checker.source(source);
                checker.destination(destination);
            }
            Statement::Save { value, account } => {
                checker.sent_value(value);
                checker.expr(account);
            }
            Statement::Call(call) => {
                for arg in &call.args {
                    checker.expr(arg);
                }
                match call.function {
                    Function::SetTxMeta | Function::SetAccountMeta => checker.call_arity(call),
                    Function::Unknown => checker.unknown_function(call),
                    _ => checker.error(
                        call.name,
                        format!(
                            "`{}` is not a statement (only `set_tx_meta` and `set_account_meta` are)",
                            call.name.text(source)
                        ),
                    ),
                }
            }
        }
    }
    checker.diagnostics
}

impl Checker<'_> {
    fn error(&mut self, span: Span, message: String) {
        self.diagnostics.push(RawDiagnostic {
            span,
            severity: Severity::Error,
            message,
        });
    }

    fn warning(&mut self, span: Span, message: String) {
        self.diagnostics.push(RawDiagnostic {
            span,
            severity: Severity::Warning,
            message,
        });
    }

    fn variable(&mut self, name: Span) {
        let text = name.text(self.source);
        if !self.declared.contains_key(text) {
            let span = Span {
                start: name.start - 1,
                end: name.end,
            };
            self.error(span, format!("unbound variable `${text}`"));
        }
    }

    fn unknown_function(&mut self, call: &Call) {
        let name = call.name.text(self.source);
        self.error(call.name, format!("unknown function `{name}`"));
    }

    fn call_arity(&mut self, call: &Call) {
        let expected = match call.function {
            Function::Meta | Function::Balance | Function::Overdraft => 2,
            Function::GetAsset | Function::GetAmount => 1,
            Function::SetTxMeta => 2,
            Function::SetAccountMeta => 3,
            Function::Unknown => return self.unknown_function(call),
        };
        if call.args.len() != expected {
            let name = call.name.text(self.source);
            self.error(
                call.name,
                format!(
                    "`{name}` takes {expected} arguments, {} given",
                    call.args.len()
                ),
            );
        }
    }

    fn sent_value(&mut self, value: &SentValue) {
        match value {
            SentValue::Amount(expr) | SentValue::All(expr) => self.expr(expr),
        }
    }

    fn expr(&mut self, expr: &Expr) {
        match &expr.kind {
            ExprKind::Variable { name, .. } => self.variable(*name),
            ExprKind::Asset
            | ExprKind::String(_)
            | ExprKind::Number(_)
            | ExprKind::Percentage(_) => {}
            ExprKind::Account(literal) => {
                for segment in literal.segments.iter().flatten() {
                    if let AccountSegment::Variable { name, .. } = segment {
                        self.variable(*name);
                    }
                }
            }
            ExprKind::Monetary { asset, amount } => {
                self.expr(asset);
                self.expr(amount);
            }
            ExprKind::Negate(inner) => self.expr(inner),
            ExprKind::Binary { left, right, .. } => {
                self.expr(left);
                self.expr(right);
            }
            ExprKind::Call(call) => {
                for arg in &call.args {
                    self.expr(arg);
                }
                match call.function {
                    Function::Meta => self.error(
                        call.name,
                        "`meta()` can only be the whole origin of a variable".to_string(),
                    ),
                    Function::SetTxMeta | Function::SetAccountMeta => self.error(
                        call.name,
                        format!(
                            "`{}` can only be used as a statement",
                            call.name.text(self.source)
                        ),
                    ),
                    _ => self.call_arity(call),
                }
            }
        }
    }

    fn remaining_count<'x, T: 'x>(&mut self, items: impl Iterator<Item = &'x (Allot, T)>) {
        let spans: Vec<Span> = items
            .filter_map(|(allot, _)| match allot {
                Allot::Remaining(span) => Some(*span),
                Allot::Portion(_) => None,
            })
            .collect();
        if spans.len() > 1 {
            let message = "several `remaining` items: only the last one gets the rest".into();
            self.warning(spans[0], message);
        }
    }

    fn source(&mut self, source: &Source) {
        match source {
            Source::Account { account, color } => {
                self.expr(account);
                if let Some(color) = color {
                    self.expr(color);
                }
            }
            Source::Overdraft {
                account,
                color,
                bound,
            } => {
                self.expr(account);
                for expr in color.iter().chain(bound.iter()) {
                    self.expr(expr);
                }
            }
            Source::Scaling { account, through } => {
                self.expr(account);
                self.expr(through);
            }
            Source::InOrder(sources) | Source::Oneof(sources) => {
                for source in sources {
                    self.source(source);
                }
            }
            Source::Allotment(items) => {
                self.remaining_count(items.iter());
                for (allot, source) in items {
                    if let Allot::Portion(portion) = allot {
                        self.expr(portion);
                    }
                    self.source(source);
                }
            }
            Source::Capped { cap, from } => {
                self.expr(cap);
                self.source(from);
            }
        }
    }

    fn destination(&mut self, destination: &Destination) {
        match destination {
            Destination::Account(account) => self.expr(account),
            Destination::Allotment(items) => {
                self.remaining_count(items.iter());
                for (allot, target) in items {
                    if let Allot::Portion(portion) = allot {
                        self.expr(portion);
                    }
                    self.target(target);
                }
            }
            Destination::InOrder { clauses, remaining }
            | Destination::Oneof { clauses, remaining } => {
                for (cap, target) in clauses {
                    self.expr(cap);
                    self.target(target);
                }
                self.target(remaining);
            }
        }
    }

    fn target(&mut self, target: &KeptOrDestination) {
        if let KeptOrDestination::To(destination) = target {
            self.destination(destination);
        }
    }
}

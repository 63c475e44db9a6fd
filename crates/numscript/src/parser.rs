//! Recursive-descent parser with error recovery: an error inside a statement (or a variable
//! declaration) is recorded and the parser skips to the next statement, so one pass reports
//! every broken statement.

use std::collections::HashMap;

use crate::lexer::{lex, Token, TokenKind};
use crate::limits::{
    ALLOTMENT_ITEMS_MAX, BLOCK_ITEMS_MAX, DIAGNOSTICS_MAX, FEATURES_MAX, FUNCTION_ARGS_MAX,
    NESTING_DEPTH_MAX, STATEMENTS_MAX, VARIABLES_MAX,
};
use crate::syntax::*;
use crate::value::{parse_integer, percentage_ratio};
use crate::Severity;

/// A diagnostic before line/column resolution.
#[derive(Clone, Debug)]
pub(crate) struct RawDiagnostic {
    pub(crate) span: Span,
    pub(crate) severity: Severity,
    pub(crate) message: String,
}

/// Marker: an error was recorded, unwind to the closest recovery point.
struct Fail;

type PResult<T> = Result<T, Fail>;

struct Parser<'s> {
    source: &'s str,
    tokens: Vec<Token>,
    pos: usize,
    diagnostics: Vec<RawDiagnostic>,
    depth: u32,
    /// Distinct variable names in order of first appearance; a name's slot is its index.
    slots: Vec<&'s str>,
    /// Built once there are many names, so that lookups stay cheap in huge scripts.
    slot_index: Option<HashMap<&'s str, u32>>,
}

/// Parses a whole script. The tree is meaningful only when no error diagnostic is returned.
pub(crate) fn parse(source: &str) -> (Ast, Vec<RawDiagnostic>) {
    let (tokens, lex_errors) = lex(source);
    let mut parser = Parser {
        source,
        tokens,
        pos: 0,
        diagnostics: Vec::new(),
        depth: 0,
        slots: Vec::new(),
        slot_index: None,
    };
    for error in lex_errors {
        parser.push(error.span, error.message);
    }
    let mut ast = parser.program();
    ast.var_slots = parser.slots.len() as u32;
    let mut diagnostics = parser.diagnostics;
    diagnostics.sort_by_key(|d| (d.span.start, d.span.end));
    diagnostics.truncate(DIAGNOSTICS_MAX);
    (ast, diagnostics)
}

impl<'s> Parser<'s> {
    fn push(&mut self, span: Span, message: String) {
        if self.diagnostics.len() < DIAGNOSTICS_MAX {
            self.diagnostics.push(RawDiagnostic {
                span,
                severity: Severity::Error,
                message,
            });
        }
    }

    fn peek(&self) -> TokenKind {
        self.tokens[self.pos].kind
    }

    fn peek_at(&self, offset: usize) -> TokenKind {
        self.tokens
            .get(self.pos + offset)
            .map_or(TokenKind::Eof, |t| t.kind)
    }

    fn current(&self) -> Token {
        self.tokens[self.pos]
    }

    fn bump(&mut self) -> Token {
        let token = self.tokens[self.pos];
        if token.kind != TokenKind::Eof {
            self.pos += 1;
        }
        token
    }

    fn at(&self, kind: TokenKind) -> bool {
        self.peek() == kind
    }

    fn eat(&mut self, kind: TokenKind) -> bool {
        if self.at(kind) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn found(&self) -> String {
        let token = self.current();
        if token.kind == TokenKind::Eof {
            return "the end of the script".to_string();
        }
        let text = token.span.text(self.source);
        if text.chars().count() > 40 {
            let cut: String = text.chars().take(40).collect();
            format!("`{cut}…`")
        } else {
            format!("`{text}`")
        }
    }

    fn error_here(&mut self, expected: &str) -> Fail {
        let message = format!("expected {expected}, found {}", self.found());
        let span = self.current().span;
        self.push(span, message);
        Fail
    }

    fn expect(&mut self, kind: TokenKind, context: &str) -> PResult<Token> {
        if self.at(kind) {
            Ok(self.bump())
        } else {
            Err(self.error_here(&format!("{} {context}", kind.describe())))
        }
    }

    fn enter(&mut self) -> PResult<()> {
        if self.depth >= NESTING_DEPTH_MAX {
            let span = self.current().span;
            self.push(
                span,
                format!("nesting too deep (at most {NESTING_DEPTH_MAX} levels)"),
            );
            return Err(Fail);
        }
        self.depth += 1;
        Ok(())
    }

    fn leave(&mut self) {
        assert!(self.depth > 0);
        self.depth -= 1;
    }

    fn slot(&mut self, name: &'s str) -> u32 {
        // Scripts have few variables: a linear search beats hashing until there are many.
        let found = match &self.slot_index {
            Some(index) => index.get(name).copied(),
            None => self.slots.iter().position(|n| *n == name).map(|i| i as u32),
        };
        if let Some(slot) = found {
            return slot;
        }
        let slot = self.slots.len() as u32;
        self.slots.push(name);
        match &mut self.slot_index {
            Some(index) => {
                index.insert(name, slot);
            }
            None if self.slots.len() > 32 => {
                let index = self
                    .slots
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (*n, i as u32))
                    .collect();
                self.slot_index = Some(index);
            }
            None => {}
        }
        slot
    }

    fn is_statement_start(&self) -> bool {
        match self.peek() {
            TokenKind::Send | TokenKind::Save | TokenKind::Vars | TokenKind::Eof => true,
            TokenKind::Ident => matches!(
                Function::from_name(self.current().span.text(self.source)),
                Function::SetTxMeta | Function::SetAccountMeta
            ),
            _ => false,
        }
    }

    /// Skips to the next token that can start a statement, consuming at least one token.
    fn recover(&mut self, start_pos: usize) {
        self.depth = 0;
        if self.pos == start_pos {
            self.bump();
        }
        while !self.is_statement_start() {
            self.bump();
        }
    }

    fn program(&mut self) -> Ast {
        let mut ast = Ast::default();
        if self.at(TokenKind::HashBang) {
            let start = self.pos;
            if self.feature_declaration(&mut ast.features).is_err() {
                self.recover(start);
            }
        }
        let mut seen_statement = false;
        loop {
            match self.peek() {
                TokenKind::Eof => break,
                TokenKind::Vars => {
                    let token = self.current();
                    if seen_statement || !ast.vars.is_empty() {
                        self.push(
                            token.span,
                            "the `vars` block must come once, before all statements".into(),
                        );
                    }
                    let start = self.pos;
                    if self.vars_block(&mut ast.vars).is_err() {
                        self.recover(start);
                    }
                }
                _ => {
                    seen_statement = true;
                    let start = self.pos;
                    match self.statement() {
                        Ok(statement) => {
                            if ast.statements.len() == STATEMENTS_MAX {
                                let span = self.tokens[start].span;
                                self.push(
                                    span,
                                    format!("too many statements (at most {STATEMENTS_MAX})"),
                                );
                            }
                            ast.statements.push(statement);
                        }
                        Err(Fail) => self.recover(start),
                    }
                }
            }
        }
        ast
    }

    fn feature_declaration(&mut self, features: &mut Vec<Span>) -> PResult<()> {
        self.expect(TokenKind::HashBang, "")?;
        self.expect(TokenKind::LBracket, "after `#!`")?;
        self.expect(TokenKind::Feature, "in `#![feature(…)]`")?;
        self.expect(TokenKind::LParen, "after `feature`")?;
        loop {
            let token = self.expect(TokenKind::String, "(a feature flag name)")?;
            if features.len() == FEATURES_MAX {
                self.push(
                    token.span,
                    format!("too many feature flags (at most {FEATURES_MAX})"),
                );
            }
            features.push(Span {
                start: token.span.start + 1,
                end: token.span.end - 1,
            });
            if !self.eat(TokenKind::Comma) {
                break;
            }
        }
        if !self.at(TokenKind::RParen) {
            return Err(self.error_here("`,` or `)` in the feature list"));
        }
        self.bump();
        self.expect(TokenKind::RBracket, "to close `#![feature(…)]`")?;
        Ok(())
    }

    fn vars_block(&mut self, vars: &mut Vec<VarDecl>) -> PResult<()> {
        self.expect(TokenKind::Vars, "")?;
        self.expect(TokenKind::LBrace, "after `vars`")?;
        loop {
            match self.peek() {
                TokenKind::RBrace => {
                    self.bump();
                    return Ok(());
                }
                TokenKind::Eof => return Err(self.error_here("`}` to close the `vars` block")),
                _ => {}
            }
            let start = self.pos;
            match self.var_declaration() {
                Ok(decl) => {
                    if vars.len() == VARIABLES_MAX {
                        let span = decl.name;
                        self.push(
                            span,
                            format!("too many variables (at most {VARIABLES_MAX})"),
                        );
                    }
                    vars.push(decl);
                }
                Err(Fail) => {
                    // Skip to the next declaration (`type $name`) or the end of the block.
                    if self.pos == start {
                        self.bump();
                    }
                    loop {
                        match self.peek() {
                            TokenKind::RBrace | TokenKind::Eof => break,
                            TokenKind::Ident if self.peek_at(1) == TokenKind::Variable => break,
                            _ if self.is_statement_start() => return Err(Fail),
                            _ => {
                                self.bump();
                            }
                        }
                    }
                }
            }
        }
    }

    fn var_declaration(&mut self) -> PResult<VarDecl> {
        let ty = self.expect(
            TokenKind::Ident,
            "(a variable type such as `monetary` or `account`)",
        )?;
        let name = self.expect(TokenKind::Variable, "after the variable type")?;
        let text = Span {
            start: name.span.start + 1,
            end: name.span.end,
        }
        .text(self.source);
        let slot = self.slot(text);
        let origin = if self.eat(TokenKind::Eq) {
            Some(self.expr()?)
        } else {
            None
        };
        Ok(VarDecl {
            ty: ty.span,
            name: name.span,
            slot,
            origin,
        })
    }

    fn statement(&mut self) -> PResult<Statement> {
        match self.peek() {
            TokenKind::Send => {
                self.bump();
                let value = self.sent_value()?;
                self.expect(TokenKind::LParen, "after the sent value")?;
                self.expect(TokenKind::Source, "in a `send` statement")?;
                self.expect(TokenKind::Eq, "after `source`")?;
                let source = self.source()?;
                self.expect(TokenKind::Destination, "after the source")?;
                self.expect(TokenKind::Eq, "after `destination`")?;
                let destination = self.destination()?;
                self.expect(TokenKind::RParen, "to close the `send` statement")?;
                Ok(Statement::Send {
                    value,
                    source,
                    destination,
                })
            }
            TokenKind::Save => {
                self.bump();
                let value = self.sent_value()?;
                self.expect(TokenKind::From, "after the saved value")?;
                let account = self.expr()?;
                Ok(Statement::Save { value, account })
            }
            TokenKind::Ident | TokenKind::Overdraft if self.peek_at(1) == TokenKind::LParen => {
                Ok(Statement::Call(self.call()?))
            }
            _ => Err(self.error_here("a statement (`send`, `save` or a function call)")),
        }
    }

    /// A monetary expression, or `[ASSET *]`.
    fn sent_value(&mut self) -> PResult<SentValue> {
        if self.at(TokenKind::LBracket) {
            // Try `[asset *]` first; fall back to a full expression.
            let (pos, diagnostics) = (self.pos, self.diagnostics.len());
            self.bump();
            if let Ok(asset) = self.operand() {
                if self.eat(TokenKind::Star) {
                    self.expect(TokenKind::RBracket, "after `*`")?;
                    return Ok(SentValue::All(asset));
                }
            }
            self.pos = pos;
            self.diagnostics.truncate(diagnostics);
        }
        Ok(SentValue::Amount(self.expr()?))
    }

    fn source(&mut self) -> PResult<Source> {
        self.enter()?;
        let result = self.source_inner();
        self.leave();
        result
    }

    fn source_inner(&mut self) -> PResult<Source> {
        match self.peek() {
            TokenKind::LBrace => self.source_block(),
            TokenKind::Oneof => {
                self.bump();
                self.expect(TokenKind::LBrace, "after `oneof`")?;
                let mut sources = Vec::new();
                while !self.at(TokenKind::RBrace) {
                    if self.at(TokenKind::Eof) {
                        return Err(self.error_here("`}` to close the `oneof` block"));
                    }
                    self.check_block_len(sources.len(), BLOCK_ITEMS_MAX)?;
                    sources.push(self.source()?);
                }
                if sources.is_empty() {
                    return Err(self.error_here("at least one source in `oneof { … }`"));
                }
                self.bump();
                Ok(Source::Oneof(sources))
            }
            TokenKind::Max => {
                self.bump();
                let cap = self.expr()?;
                self.expect(TokenKind::From, "after the `max` cap")?;
                let from = self.source()?;
                Ok(Source::Capped {
                    cap,
                    from: Box::new(from),
                })
            }
            _ => {
                let account = self.expr()?;
                self.source_after_account(account)
            }
        }
    }

    fn source_after_account(&mut self, account: Expr) -> PResult<Source> {
        let color = if self.eat(TokenKind::Backslash) {
            Some(self.expr()?)
        } else {
            None
        };
        if self.eat(TokenKind::Allowing) {
            if self.eat(TokenKind::Unbounded) {
                self.expect(TokenKind::Overdraft, "after `allowing unbounded`")?;
                return Ok(Source::Overdraft {
                    account,
                    color,
                    bound: None,
                });
            }
            self.expect(
                TokenKind::Overdraft,
                "after `allowing` (or `unbounded overdraft`)",
            )?;
            self.expect(TokenKind::Up, "after `allowing overdraft`")?;
            self.expect(TokenKind::To, "after `allowing overdraft up`")?;
            let bound = self.expr()?;
            return Ok(Source::Overdraft {
                account,
                color,
                bound: Some(bound),
            });
        }
        if color.is_none() && self.eat(TokenKind::With) {
            self.expect(TokenKind::Scaling, "after `with`")?;
            self.expect(TokenKind::Through, "after `with scaling`")?;
            let through = self.expr()?;
            return Ok(Source::Scaling { account, through });
        }
        Ok(Source::Account { account, color })
    }

    fn check_block_len(&mut self, len: usize, max: usize) -> PResult<()> {
        if len >= max {
            let span = self.current().span;
            self.push(span, format!("too many items in one block (at most {max})"));
            return Err(Fail);
        }
        Ok(())
    }

    /// `{ … }` in source position: an allotment (`portion from source`) or an in-order list.
    fn source_block(&mut self) -> PResult<Source> {
        self.expect(TokenKind::LBrace, "")?;
        let first_is_allotment = match self.peek() {
            TokenKind::RBrace => {
                self.bump();
                return Ok(Source::InOrder(Vec::new()));
            }
            TokenKind::Remaining => true,
            TokenKind::LBrace | TokenKind::Max | TokenKind::Oneof => false,
            _ => {
                let first = self.expr()?;
                if self.eat(TokenKind::From) {
                    let from = self.source()?;
                    return self.allotment_source(vec![(Allot::Portion(first), from)]);
                }
                let first = self.source_after_account(first)?;
                return self.in_order_source(vec![first]);
            }
        };
        if first_is_allotment {
            self.allotment_source(Vec::new())
        } else {
            self.in_order_source(Vec::new())
        }
    }

    fn allotment_source(&mut self, mut items: Vec<(Allot, Source)>) -> PResult<Source> {
        while !self.eat(TokenKind::RBrace) {
            if self.at(TokenKind::Eof) {
                return Err(self.error_here("`}` to close the source allotment"));
            }
            self.check_block_len(items.len(), ALLOTMENT_ITEMS_MAX)?;
            let allot = self.allot()?;
            self.expect(TokenKind::From, "after the portion (`portion from source`)")?;
            items.push((allot, self.source()?));
        }
        Ok(Source::Allotment(items))
    }

    fn in_order_source(&mut self, mut sources: Vec<Source>) -> PResult<Source> {
        while !self.eat(TokenKind::RBrace) {
            if self.at(TokenKind::Eof) {
                return Err(self.error_here("`}` to close the source block"));
            }
            self.check_block_len(sources.len(), BLOCK_ITEMS_MAX)?;
            sources.push(self.source()?);
        }
        Ok(Source::InOrder(sources))
    }

    fn allot(&mut self) -> PResult<Allot> {
        if self.at(TokenKind::Remaining) {
            Ok(Allot::Remaining(self.bump().span))
        } else {
            Ok(Allot::Portion(self.expr()?))
        }
    }

    fn destination(&mut self) -> PResult<Destination> {
        self.enter()?;
        let result = self.destination_inner();
        self.leave();
        result
    }

    fn destination_inner(&mut self) -> PResult<Destination> {
        match self.peek() {
            TokenKind::LBrace => {
                self.bump();
                match self.peek() {
                    TokenKind::RBrace => Err(self.error_here("a destination inside `{ }`")),
                    TokenKind::Max => {
                        let (clauses, remaining) = self.capped_clauses("destination block")?;
                        Ok(Destination::InOrder { clauses, remaining })
                    }
                    _ => {
                        let mut items = Vec::new();
                        while !self.eat(TokenKind::RBrace) {
                            if self.at(TokenKind::Eof) {
                                return Err(
                                    self.error_here("`}` to close the destination allotment")
                                );
                            }
                            self.check_block_len(items.len(), ALLOTMENT_ITEMS_MAX)?;
                            let allot = self.allot()?;
                            items.push((allot, self.kept_or_destination()?));
                        }
                        Ok(Destination::Allotment(items))
                    }
                }
            }
            TokenKind::Oneof => {
                self.bump();
                self.expect(TokenKind::LBrace, "after `oneof`")?;
                let (clauses, remaining) = self.capped_clauses("`oneof` block")?;
                Ok(Destination::Oneof { clauses, remaining })
            }
            _ => Ok(Destination::Account(self.expr()?)),
        }
    }

    /// `(max CAP keptOrDest)* remaining keptOrDest }`, after the opening `{`.
    #[allow(clippy::type_complexity)]
    fn capped_clauses(
        &mut self,
        block: &str,
    ) -> PResult<(Vec<(Expr, KeptOrDestination)>, Box<KeptOrDestination>)> {
        let mut clauses = Vec::new();
        while self.eat(TokenKind::Max) {
            self.check_block_len(clauses.len(), BLOCK_ITEMS_MAX)?;
            let cap = self.expr()?;
            clauses.push((cap, self.kept_or_destination()?));
        }
        if !self.eat(TokenKind::Remaining) {
            return Err(self.error_here(&format!("`max` or `remaining` in the {block}")));
        }
        let remaining = self.kept_or_destination()?;
        self.expect(
            TokenKind::RBrace,
            &format!("after the `remaining` clause of the {block}"),
        )?;
        Ok((clauses, Box::new(remaining)))
    }

    fn kept_or_destination(&mut self) -> PResult<KeptOrDestination> {
        if self.eat(TokenKind::Kept) {
            return Ok(KeptOrDestination::Kept);
        }
        if self.eat(TokenKind::To) {
            return Ok(KeptOrDestination::To(self.destination()?));
        }
        Err(self.error_here("`to` or `kept`"))
    }

    fn call(&mut self) -> PResult<Call> {
        let name = self.bump();
        assert!(matches!(name.kind, TokenKind::Ident | TokenKind::Overdraft));
        self.expect(TokenKind::LParen, "after the function name")?;
        let mut args = Vec::new();
        if !self.eat(TokenKind::RParen) {
            loop {
                if args.len() == FUNCTION_ARGS_MAX {
                    let span = self.current().span;
                    self.push(
                        span,
                        format!("too many arguments (at most {FUNCTION_ARGS_MAX})"),
                    );
                    return Err(Fail);
                }
                args.push(self.expr()?);
                if self.eat(TokenKind::RParen) {
                    break;
                }
                self.expect(TokenKind::Comma, "or `)` in the argument list")?;
            }
        }
        let function = Function::from_name(name.span.text(self.source));
        Ok(Call {
            name: name.span,
            function,
            args,
        })
    }

    /// A full expression: `+` and `-` over `/` over prefix `-` over primaries.
    fn expr(&mut self) -> PResult<Expr> {
        self.enter()?;
        let result = self.additive();
        self.leave();
        result
    }

    fn additive(&mut self) -> PResult<Expr> {
        let mut left = self.operand()?;
        let depth = self.depth;
        let mut result = Ok(());
        loop {
            let op = match self.peek() {
                TokenKind::Plus => BinaryOp::Add,
                TokenKind::Minus => BinaryOp::Sub,
                _ => break,
            };
            // A left-deep chain nests as deeply as it is long.
            if let Err(fail) = self.enter() {
                result = Err(fail);
                break;
            }
            self.bump();
            let right = match self.operand() {
                Ok(right) => right,
                Err(fail) => {
                    result = Err(fail);
                    break;
                }
            };
            let span = left.span.to(right.span);
            left = Expr {
                kind: ExprKind::Binary {
                    op,
                    left: Box::new(left),
                    right: Box::new(right),
                },
                span,
            };
        }
        self.depth = depth;
        result.map(|()| left)
    }

    /// `/` over prefix `-` over primaries: what a monetary literal's asset position accepts.
    fn operand(&mut self) -> PResult<Expr> {
        let mut left = self.unary()?;
        let depth = self.depth;
        let mut result = Ok(());
        while self.at(TokenKind::Slash) {
            if let Err(fail) = self.enter() {
                result = Err(fail);
                break;
            }
            self.bump();
            let right = match self.unary() {
                Ok(right) => right,
                Err(fail) => {
                    result = Err(fail);
                    break;
                }
            };
            let span = left.span.to(right.span);
            left = Expr {
                kind: ExprKind::Binary {
                    op: BinaryOp::Div,
                    left: Box::new(left),
                    right: Box::new(right),
                },
                span,
            };
        }
        self.depth = depth;
        result.map(|()| left)
    }

    /// A monetary literal after its `[`.
    fn monetary_rest(&mut self, open: Span) -> PResult<Expr> {
        let asset = self.operand()?;
        if self.at(TokenKind::Star) {
            let span = self.current().span;
            self.push(
                span,
                "`[ASSET *]` (send all) is only allowed as the value of `send` or `save`".into(),
            );
            return Err(Fail);
        }
        let amount = self.expr()?;
        let close = self.expect(TokenKind::RBracket, "to close the monetary literal")?;
        Ok(Expr {
            kind: ExprKind::Monetary {
                asset: Box::new(asset),
                amount: Box::new(amount),
            },
            span: open.to(close.span),
        })
    }

    fn unary(&mut self) -> PResult<Expr> {
        if self.at(TokenKind::Minus) {
            let minus = self.bump();
            self.enter()?;
            let inner = self.unary();
            self.leave();
            let inner = inner?;
            let span = minus.span.to(inner.span);
            return Ok(Expr {
                kind: ExprKind::Negate(Box::new(inner)),
                span,
            });
        }
        self.primary()
    }

    fn primary(&mut self) -> PResult<Expr> {
        let token = self.current();
        let kind = match token.kind {
            TokenKind::Variable => {
                self.bump();
                let name = Span {
                    start: token.span.start + 1,
                    end: token.span.end,
                };
                let slot = self.slot(name.text(self.source));
                ExprKind::Variable { name, slot }
            }
            TokenKind::Asset => {
                self.bump();
                ExprKind::Asset
            }
            TokenKind::String => {
                self.bump();
                ExprKind::String(Span {
                    start: token.span.start + 1,
                    end: token.span.end - 1,
                })
            }
            TokenKind::Account => {
                self.bump();
                ExprKind::Account(self.account_literal(token.span))
            }
            TokenKind::Number => {
                self.bump();
                let text: String = token
                    .span
                    .text(self.source)
                    .chars()
                    .filter(|c| *c != '_')
                    .collect();
                match parse_integer(&text) {
                    Some(Ok(n)) => ExprKind::Number(n),
                    _ => {
                        self.push(
                            token.span,
                            format!(
                                "number `{}` is out of range (at most {})",
                                token.span.text(self.source),
                                crate::Amount::MAX
                            ),
                        );
                        return Err(Fail);
                    }
                }
            }
            TokenKind::Percentage => {
                self.bump();
                let text = token.span.text(self.source);
                let text = &text[..text.len() - 1];
                let (integral, fractional) = text.split_once('.').unwrap_or((text, ""));
                match percentage_ratio(integral, fractional) {
                    Some(ratio) => ExprKind::Percentage(ratio),
                    None => {
                        self.push(token.span, format!("percentage `{text}%` is out of range"));
                        return Err(Fail);
                    }
                }
            }
            TokenKind::LBracket => {
                self.bump();
                // The asset is an operand, which may open another literal: counted, so that
                // `[[[…` is refused, not a stack overflow.
                self.enter()?;
                let literal = self.monetary_rest(token.span);
                self.leave();
                return literal;
            }
            TokenKind::LParen => {
                self.bump();
                let mut inner = self.expr()?;
                let close = self.expect(TokenKind::RParen, "to close the parenthesis")?;
                inner.span = token.span.to(close.span);
                return Ok(inner);
            }
            TokenKind::Ident | TokenKind::Overdraft if self.peek_at(1) == TokenKind::LParen => {
                self.enter()?;
                let call = self.call();
                self.leave();
                let call = call?;
                let end = self.tokens[self.pos - 1].span;
                return Ok(Expr {
                    kind: ExprKind::Call(call),
                    span: token.span.to(end),
                });
            }
            _ => return Err(self.error_here("a value (a variable, literal or function call)")),
        };
        Ok(Expr {
            kind,
            span: token.span,
        })
    }

    fn account_literal(&mut self, span: Span) -> AccountLiteral {
        let name = Span {
            start: span.start + 1,
            end: span.end,
        };
        let text = name.text(self.source);
        if !text.contains('$') {
            return AccountLiteral {
                name,
                segments: None,
            };
        }
        let mut segments = Vec::new();
        let mut offset = name.start;
        for (index, part) in text.split(':').enumerate() {
            if index > 0 {
                segments.push(AccountSegment::Text(Span {
                    start: offset - 1,
                    end: offset,
                }));
            }
            let part_span = Span {
                start: offset,
                end: offset + part.len() as u32,
            };
            if let Some(var) = part.strip_prefix('$') {
                let slot = self.slot(var);
                segments.push(AccountSegment::Variable {
                    name: Span {
                        start: part_span.start + 1,
                        end: part_span.end,
                    },
                    slot,
                });
            } else {
                segments.push(AccountSegment::Text(part_span));
            }
            offset = part_span.end + 1;
        }
        AccountLiteral {
            name,
            segments: Some(segments),
        }
    }
}

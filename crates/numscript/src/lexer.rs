//! Hand-written lexer. It never fails: bad input becomes a diagnostic and is skipped, so the
//! parser can report every error of a script in one pass.

use crate::syntax::Span;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenKind {
    // Keywords.
    Vars,
    Max,
    Source,
    Destination,
    Send,
    From,
    Up,
    To,
    Remaining,
    Allowing,
    Unbounded,
    Overdraft,
    Oneof,
    Kept,
    Save,
    With,
    Scaling,
    Through,
    Feature,
    // Punctuation.
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Comma,
    Eq,
    Star,
    Plus,
    Minus,
    Slash,
    Backslash,
    HashBang,
    // Literals and names.
    Percentage,
    String,
    Ident,
    Number,
    Asset,
    Account,
    Variable,
    Eof,
}

impl TokenKind {
    /// How the token is named in diagnostics.
    pub(crate) fn describe(self) -> &'static str {
        use TokenKind::*;
        match self {
            Vars => "`vars`",
            Max => "`max`",
            Source => "`source`",
            Destination => "`destination`",
            Send => "`send`",
            From => "`from`",
            Up => "`up`",
            To => "`to`",
            Remaining => "`remaining`",
            Allowing => "`allowing`",
            Unbounded => "`unbounded`",
            Overdraft => "`overdraft`",
            Oneof => "`oneof`",
            Kept => "`kept`",
            Save => "`save`",
            With => "`with`",
            Scaling => "`scaling`",
            Through => "`through`",
            Feature => "`feature`",
            LParen => "`(`",
            RParen => "`)`",
            LBracket => "`[`",
            RBracket => "`]`",
            LBrace => "`{`",
            RBrace => "`}`",
            Comma => "`,`",
            Eq => "`=`",
            Star => "`*`",
            Plus => "`+`",
            Minus => "`-`",
            Slash => "`/`",
            Backslash => "`\\`",
            HashBang => "`#!`",
            Percentage => "a percentage",
            String => "a string",
            Ident => "a name",
            Number => "a number",
            Asset => "an asset",
            Account => "an account",
            Variable => "a variable",
            Eof => "the end of the script",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) kind: TokenKind,
    pub(crate) span: Span,
}

/// A lexical error: a span and a message.
pub(crate) struct LexError {
    pub(crate) span: Span,
    pub(crate) message: String,
}

fn keyword(text: &str) -> Option<TokenKind> {
    use TokenKind::*;
    Some(match text {
        "vars" => Vars,
        "max" => Max,
        "source" => Source,
        "destination" => Destination,
        "send" => Send,
        "from" => From,
        "up" => Up,
        "to" => To,
        "remaining" => Remaining,
        "allowing" => Allowing,
        "unbounded" => Unbounded,
        "overdraft" => Overdraft,
        "oneof" => Oneof,
        "kept" => Kept,
        "save" => Save,
        "with" => With,
        "scaling" => Scaling,
        "through" => Through,
        "feature" => Feature,
        _ => return None,
    })
}

fn is_account_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Length of a variable name (`$` included) starting at `at`, or 0 if there is none.
fn variable_len(bytes: &[u8], at: usize) -> usize {
    if bytes.get(at) != Some(&b'$') {
        return 0;
    }
    let mut i = at + 1;
    let first = i;
    while i < bytes.len() && (bytes[i].is_ascii_lowercase() || bytes[i] == b'_') {
        i += 1;
    }
    if i == first {
        return 0;
    }
    while i < bytes.len()
        && (bytes[i].is_ascii_lowercase() || bytes[i].is_ascii_digit() || bytes[i] == b'_')
    {
        i += 1;
    }
    i - at
}

/// Length of one account segment (literal text or `$var`) starting at `at`, or 0.
fn account_segment_len(bytes: &[u8], at: usize) -> usize {
    let var = variable_len(bytes, at);
    if var > 0 {
        return var;
    }
    let mut i = at;
    while i < bytes.len() && is_account_char(bytes[i]) {
        i += 1;
    }
    i - at
}

fn span(start: usize, end: usize) -> Span {
    Span {
        start: start as u32,
        end: end as u32,
    }
}

/// Splits `source` into tokens (ending with `Eof`) and lexical errors.
pub(crate) fn lex(source: &str) -> (Vec<Token>, Vec<LexError>) {
    assert!(source.len() <= u32::MAX as usize);
    let bytes = source.as_bytes();
    let mut tokens = Vec::with_capacity(source.len() / 4 + 1);
    let mut errors = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let b = bytes[i];
        let kind = match b {
            b' ' | b'\t' | b'\r' | b'\n' => {
                i += 1;
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                // Block comments nest.
                let mut depth = 0u32;
                loop {
                    if i >= bytes.len() {
                        errors.push(LexError {
                            span: span(start, start + 2),
                            message: "unterminated comment: `/*` has no matching `*/`".into(),
                        });
                        break;
                    }
                    if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            b'(' => TokenKind::LParen,
            b')' => TokenKind::RParen,
            b'[' => TokenKind::LBracket,
            b']' => TokenKind::RBracket,
            b'{' => TokenKind::LBrace,
            b'}' => TokenKind::RBrace,
            b',' => TokenKind::Comma,
            b'=' => TokenKind::Eq,
            b'*' => TokenKind::Star,
            b'+' => TokenKind::Plus,
            b'-' => TokenKind::Minus,
            b'/' => TokenKind::Slash,
            b'\\' => TokenKind::Backslash,
            b'#' if bytes.get(i + 1) == Some(&b'!') => {
                i += 1;
                TokenKind::HashBang
            }
            b'"' => {
                i += 1;
                let mut closed = false;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' if bytes.get(i + 1) == Some(&b'"') => i += 2,
                        b'"' => {
                            closed = true;
                            break;
                        }
                        b'\n' | b'\r' => break,
                        _ => i += 1,
                    }
                }
                if !closed {
                    errors.push(LexError {
                        span: span(start, i),
                        message:
                            "unterminated string: a string must end with `\"` on the same line"
                                .into(),
                    });
                    continue;
                }
                TokenKind::String
            }
            b'0'..=b'9' => {
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                let digits_end = i;
                // A percentage: digits, an optional fraction, then `%`.
                let mut j = i;
                if bytes.get(j) == Some(&b'.') && bytes.get(j + 1).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                    while j < bytes.len() && bytes[j].is_ascii_digit() {
                        j += 1;
                    }
                }
                if bytes.get(j) == Some(&b'%') {
                    i = j + 1;
                    tokens.push(Token {
                        kind: TokenKind::Percentage,
                        span: span(start, i),
                    });
                    continue;
                }
                i = digits_end;
                while bytes.get(i) == Some(&b'_')
                    && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)
                {
                    i += 1;
                    while i < bytes.len() && bytes[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                if bytes.get(i) == Some(&b'_') {
                    // `1_`, `1__0`: report the whole malformed literal once.
                    while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'_') {
                        i += 1;
                    }
                    errors.push(LexError {
                        span: span(start, i),
                        message: format!(
                            "invalid number `{}`: `_` may only separate digits",
                            &source[start..i]
                        ),
                    });
                    // Keep the token so the parser does not report the same spot again.
                    tokens.push(Token {
                        kind: TokenKind::Number,
                        span: span(start, i),
                    });
                    continue;
                }
                tokens.push(Token {
                    kind: TokenKind::Number,
                    span: span(start, i),
                });
                continue;
            }
            b'a'..=b'z' => {
                while i < bytes.len() && bytes[i].is_ascii_lowercase() {
                    i += 1;
                }
                while i < bytes.len() && (bytes[i].is_ascii_lowercase() || bytes[i] == b'_') {
                    i += 1;
                }
                let kind = keyword(&source[start..i]).unwrap_or(TokenKind::Ident);
                tokens.push(Token {
                    kind,
                    span: span(start, i),
                });
                continue;
            }
            b'A'..=b'Z' => {
                i += 1;
                while i < bytes.len()
                    && (bytes[i].is_ascii_uppercase() || bytes[i].is_ascii_digit())
                {
                    i += 1;
                }
                if bytes.get(i) == Some(&b'/') && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                    while i < bytes.len() && bytes[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                tokens.push(Token {
                    kind: TokenKind::Asset,
                    span: span(start, i),
                });
                continue;
            }
            b'$' => {
                let len = variable_len(bytes, i);
                if len == 0 {
                    errors.push(LexError {
                        span: span(start, start + 1),
                        message:
                            "expected a variable name after `$` (lowercase letters, digits and `_`)"
                                .into(),
                    });
                    i += 1;
                    tokens.push(Token {
                        kind: TokenKind::Variable,
                        span: span(start, i),
                    });
                    continue;
                }
                i += len;
                tokens.push(Token {
                    kind: TokenKind::Variable,
                    span: span(start, i),
                });
                continue;
            }
            b'@' => {
                i += 1;
                let len = account_segment_len(bytes, i);
                if len == 0 {
                    errors.push(LexError {
                        span: span(start, start + 1),
                        message: "expected an account name after `@`".into(),
                    });
                    tokens.push(Token {
                        kind: TokenKind::Account,
                        span: span(start, i),
                    });
                    continue;
                }
                i += len;
                let mut valid = true;
                while bytes.get(i) == Some(&b':') {
                    let len = account_segment_len(bytes, i + 1);
                    if len == 0 {
                        errors.push(LexError {
                            span: span(i, i + 1),
                            message: "expected an account segment after `:`".into(),
                        });
                        valid = false;
                        break;
                    }
                    i += 1 + len;
                }
                tokens.push(Token {
                    kind: TokenKind::Account,
                    span: span(start, i),
                });
                if !valid {
                    i += 1; // The dangling `:`.
                }
                continue;
            }
            _ => {
                let ch = source[i..].chars().next().expect("in bounds");
                i += ch.len_utf8();
                errors.push(LexError {
                    span: span(start, i),
                    message: format!("unexpected character `{}`", ch.escape_debug()),
                });
                continue;
            }
        };
        i += 1;
        tokens.push(Token {
            kind,
            span: span(start, i),
        });
    }
    tokens.push(Token {
        kind: TokenKind::Eof,
        span: span(bytes.len(), bytes.len()),
    });
    (tokens, errors)
}

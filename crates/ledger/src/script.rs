//! How Numscript errors map onto ledger errors.

/// The interpreter's stable code for an error.
pub fn error_code(err: &numscript::RuntimeError) -> &'static str {
    err.code()
}

/// Errors about the variables a caller passed, which Formance reports as `COMPILATION_FAILED`.
pub fn is_variable_error(code: &str) -> bool {
    matches!(
        code,
        "MISSING_VARIABLE"
            | "INVALID_MONETARY_LITERAL"
            | "INVALID_NUMBER_LITERAL"
            | "BAD_PORTION_PARSING"
            | "INVALID_TYPE"
    )
}

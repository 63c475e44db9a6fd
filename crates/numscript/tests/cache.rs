//! `ProgramCache`: a repeated script is not parsed again, the cache stays within its capacity
//! (evicting the least recently used script), parse errors are reported and not cached, and it
//! can be shared across threads.

use std::sync::Arc;

use numscript::ProgramCache;

/// Fetches `scripts` in order from a cache of `capacity`, then checks which of `probe` are
/// still cached (same program, not re-parsed) and the final size.
#[track_caller]
fn check(capacity: usize, scripts: &[&str], probe: &[(&str, bool)], len: usize) {
    let cache = ProgramCache::new(capacity);
    let mut first = std::collections::HashMap::new();
    for script in scripts {
        let program = cache.get_or_parse(script).expect("valid script");
        first.entry(*script).or_insert(program);
    }
    assert_eq!(cache.len(), len);
    for (script, cached) in probe {
        let again = cache.get_or_parse(script).expect("valid script");
        let same = std::ptr::eq(again.source().as_ptr(), first[script].source().as_ptr());
        assert_eq!(same, *cached, "{script}");
    }
}

const A: &str = "send [COIN 1] (source = @world destination = @a)";
const B: &str = "send [COIN 1] (source = @world destination = @b)";
const C: &str = "send [COIN 1] (source = @world destination = @c)";

#[test]
fn repeated_scripts_are_not_parsed_again() {
    check(4, &[A, B, A, A], &[(A, true), (B, true)], 2);
}

#[test]
fn least_recently_used_script_is_evicted() {
    // A is used again after B, so B is the oldest when C arrives.
    check(2, &[A, B, A, C], &[(A, true), (C, true), (B, false)], 2);
}

#[test]
fn parse_errors_are_reported_and_not_cached() {
    let cache = ProgramCache::new(4);
    let error = cache.get_or_parse("send (").unwrap_err();
    assert!(!error.diagnostics.is_empty());
    assert_eq!(cache.len(), 0);
}

#[test]
fn shared_across_threads() {
    let cache = Arc::new(ProgramCache::new(8));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let cache = Arc::clone(&cache);
            std::thread::spawn(move || {
                for _ in 0..100 {
                    cache.get_or_parse(A).expect("valid");
                    cache.get_or_parse(B).expect("valid");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("no panic");
    }
    assert_eq!(cache.len(), 2);
}

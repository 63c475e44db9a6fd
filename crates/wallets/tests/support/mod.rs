//! Scenarios shared by the wallets' tests on each store.

use coffer_ledger::service::PageRequest;
use coffer_ledger::Metadata;
use coffer_wallets::*;

/// Fills a new wallet to its cap but for `left` places, then has creations through both
/// services (two processes, or two callers that share no turns) race for those places: exactly
/// `left` win, the others are refused naming the cap, and the wallet ends with exactly the cap.
pub fn racing_services_keep_the_balance_cap(first: &Wallets, second: &Wallets) {
    let left = 3;
    let racers = 24;
    let wallet = first
        .create_wallet(
            &CreateWallet {
                name: "capped".into(),
                metadata: Metadata::new(),
            },
            None,
        )
        .unwrap();
    let create = |wallets: &Wallets, name: String| {
        let request = CreateBalance {
            name,
            expires_at: None,
            priority: 0,
        };
        wallets.create_balance(&wallet.id, &request, None)
    };
    let service = |index: usize| {
        if index.is_multiple_of(2) {
            first
        } else {
            second
        }
    };
    // "main" counts too.
    let filler = BALANCES_PER_WALLET_MAX - 1 - left;
    std::thread::scope(|scope| {
        for part in 0..8 {
            let create = &create;
            scope.spawn(move || {
                for index in (part..filler).step_by(8) {
                    create(service(index), format!("filler{index}")).unwrap();
                }
            });
        }
    });
    let start = std::sync::Barrier::new(racers);
    let last: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..racers)
            .map(|index| {
                let (create, start) = (&create, &start);
                scope.spawn(move || {
                    start.wait();
                    create(service(index), format!("last{index}"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won = last.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, left, "{last:?}");
    for refused in last.iter().filter_map(|r| r.as_ref().err()) {
        match refused {
            WalletError::Validation(message) if message.contains("at most") => {}
            other => panic!("expected the cap's refusal, got {other:?}"),
        }
    }
    let mut stored = 0;
    let mut request = PageRequest {
        page_size: Some(100),
        cursor: None,
    };
    loop {
        let listed = second
            .list_balances(&wallet.id, &Metadata::new(), &request)
            .unwrap();
        stored += listed.data.len();
        match listed.next {
            Some(next) if listed.has_more => request.cursor = Some(next),
            _ => break,
        }
    }
    assert_eq!(stored, BALANCES_PER_WALLET_MAX);
}

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
    assert_eq!(balances_stored(second, &wallet.id), BALANCES_PER_WALLET_MAX);
}

/// How many balances wallet `wallet_id` has, listed page by page.
pub fn balances_stored(wallets: &Wallets, wallet_id: &str) -> usize {
    let mut stored = 0;
    let mut request = PageRequest {
        page_size: Some(100),
        cursor: None,
    };
    loop {
        let listed = wallets
            .list_balances(wallet_id, &Metadata::new(), &request)
            .unwrap();
        stored += listed.data.len();
        match listed.next {
            Some(next) if listed.has_more => request.cursor = Some(next),
            _ => break,
        }
    }
    stored
}

/// USD balance of `address` in the wallets' ledger, read from the raw ledger.
pub fn usd_of(wallets: &Wallets, address: &str) -> i128 {
    match wallets
        .ledgers()
        .get_account(wallets.ledger(), address, None)
    {
        Ok(account) => account
            .volumes
            .get("USD")
            .map(|v| v.input - v.output)
            .unwrap_or(0),
        Err(coffer_ledger::LedgerError::NotFound(_)) => 0,
        Err(err) => panic!("{err}"),
    }
}

/// Holds confirmed through one service and voided through the other at the same moment (two
/// processes, or two callers that share no turns): one of the two goes through, the other is
/// told the hold is closed, and the loser writes nothing, not even an empty transfer.
pub fn racing_services_close_a_hold_once(first: &Wallets, second: &Wallets) {
    let rounds: i128 = 12;
    let wallet = first
        .create_wallet(
            &CreateWallet {
                name: "holder".into(),
                metadata: Metadata::new(),
            },
            None,
        )
        .unwrap();
    let usd = |amount| Monetary {
        asset: "USD".into(),
        amount,
    };
    first
        .credit(
            &Credit {
                wallet_id: wallet.id.clone(),
                amount: usd(10 * rounds),
                sources: vec![],
                balance: None,
                reference: None,
                timestamp: None,
                metadata: Metadata::new(),
            },
            None,
        )
        .unwrap();
    let main = chart::main_account(&wallet.id);
    let mut paid = 0;
    for _ in 0..rounds {
        let request = Debit {
            wallet_id: wallet.id.clone(),
            amount: usd(10),
            pending: true,
            metadata: Metadata::new(),
            description: String::new(),
            destination: Some(Subject::Account("shop".into())),
            sources: DebitSources::Named(vec!["main".into()]),
            reference: None,
            timestamp: None,
        };
        let hold = first.debit(&request, None).unwrap().unwrap();
        let confirm = ConfirmHold {
            amount: None,
            final_: false,
        };
        let start = std::sync::Barrier::new(2);
        let (confirmed, voided) = std::thread::scope(|scope| {
            let confirming = scope.spawn(|| {
                start.wait();
                first.confirm_hold(&hold.id, &confirm, None)
            });
            let voiding = scope.spawn(|| {
                start.wait();
                second.void_hold(&hold.id, None)
            });
            (confirming.join().unwrap(), voiding.join().unwrap())
        });
        match (&confirmed, &voided) {
            (Ok(()), Err(WalletError::HoldClosed)) => paid += 10,
            (Err(WalletError::HoldClosed), Ok(())) => {}
            _ => panic!("confirm {confirmed:?}, void {voided:?}"),
        }
        assert_eq!(usd_of(second, "shop"), paid);
        assert_eq!(usd_of(second, &main), 10 * rounds - paid);
    }
    let mut request = PageRequest {
        page_size: Some(100),
        cursor: None,
    };
    loop {
        let page = second
            .ledgers()
            .list_transactions(second.ledger(), Default::default(), &request)
            .unwrap();
        let empty: Vec<_> = page
            .data
            .iter()
            .filter(|tx| tx.postings.iter().all(|p| p.amount == 0))
            .collect();
        assert!(empty.is_empty(), "the loser wrote {empty:?}");
        match page.next {
            Some(next) if page.has_more => request.cursor = Some(next),
            _ => break,
        }
    }
}

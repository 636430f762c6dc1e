//! A small token ledger canister.

use cellar_sdk::State;
use std::collections::HashMap;

cellar_sdk::wit_bindgen::generate!({
    path: "wit",
    world: "ledger",
    runtime_path: "cellar_sdk::wit_bindgen::rt",
});

use exports::example::ledger::types::LedgerError;
use exports::example::ledger::{api, lifecycle, query};

#[derive(Default)]
struct Ledger {
    balances: HashMap<String, u64>,
    total_supply: u64,
}

static LEDGER: State<Ledger> = State::new();

struct Canister;

impl lifecycle::Guest for Canister {
    fn init() {
        LEDGER.replace(Ledger::default());
        cellar_sdk::info!(
            "ledger installed; controllers: {}",
            cellar_sdk::controllers().join(", ")
        );
    }
}

impl api::Guest for Canister {
    fn mint(to: String, amount: u64) -> Result<u64, LedgerError> {
        if !cellar_sdk::is_controller(&cellar_sdk::caller()) {
            return Err(LedgerError::NotAuthorized);
        }
        LEDGER.with_mut(|l| {
            let total = l
                .total_supply
                .checked_add(amount)
                .ok_or(LedgerError::Overflow)?;
            let balance = l.balances.get(&to).copied().unwrap_or(0);
            let balance = balance.checked_add(amount).ok_or(LedgerError::Overflow)?;
            l.total_supply = total;
            l.balances.insert(to, balance);
            Ok(balance)
        })
    }

    fn transfer(to: String, amount: u64) -> Result<u64, LedgerError> {
        let from = cellar_sdk::caller();
        LEDGER.with_mut(|l| {
            let from_balance = l.balances.get(&from).copied().unwrap_or(0);
            let remaining = from_balance
                .checked_sub(amount)
                .ok_or(LedgerError::InsufficientFunds(from_balance))?;
            if from == to {
                return Ok(from_balance);
            }
            let to_balance = l.balances.get(&to).copied().unwrap_or(0);
            let to_balance = to_balance
                .checked_add(amount)
                .ok_or(LedgerError::Overflow)?;
            l.balances.insert(from, remaining);
            l.balances.insert(to, to_balance);
            Ok(remaining)
        })
    }
}

impl query::Guest for Canister {
    fn balance(who: String) -> u64 {
        LEDGER.with(|l| l.balances.get(&who).copied().unwrap_or(0))
    }

    fn total_supply() -> u64 {
        LEDGER.with(|l| l.total_supply)
    }
}

export!(Canister);

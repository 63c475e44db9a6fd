//! A small bounded pool of connections, shared by the stores' readers.

use parking_lot::{Condvar, Mutex};

use crate::store::StoreResult;

type Factory<T> = Box<dyn Fn() -> StoreResult<T> + Send + Sync>;

pub struct Pool<T> {
    factory: Factory<T>,
    connections_max: usize,
    state: Mutex<PoolState<T>>,
    available: Condvar,
}

struct PoolState<T> {
    idle: Vec<T>,
    opened: usize,
}

impl<T> Pool<T> {
    pub fn new(
        connections_max: usize,
        factory: impl Fn() -> StoreResult<T> + Send + Sync + 'static,
    ) -> Pool<T> {
        assert!(connections_max > 0);
        Pool {
            factory: Box::new(factory),
            connections_max,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                opened: 0,
            }),
            available: Condvar::new(),
        }
    }

    /// Runs `f` with a connection; a connection whose use failed is dropped, not reused,
    /// since it may be in an unknown state.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> StoreResult<R>) -> StoreResult<R> {
        let mut connection = self.take()?;
        let result = f(&mut connection);
        if result.is_err() {
            connection.discard();
        }
        result
    }

    /// A connection held until the returned guard drops (back to the pool, unless discarded).
    pub fn take(&self) -> StoreResult<Pooled<'_, T>> {
        let mut state = self.state.lock();
        let connection = loop {
            if let Some(connection) = state.idle.pop() {
                break connection;
            }
            if state.opened < self.connections_max {
                state.opened += 1;
                drop(state);
                match (self.factory)() {
                    Ok(connection) => break connection,
                    Err(err) => {
                        self.state.lock().opened -= 1;
                        self.available.notify_one();
                        return Err(err);
                    }
                }
            }
            self.available.wait(&mut state);
        };
        Ok(Pooled {
            pool: self,
            connection: Some(connection),
            keep: true,
        })
    }
}

/// A connection taken from a [`Pool`].
pub struct Pooled<'a, T> {
    pool: &'a Pool<T>,
    connection: Option<T>,
    keep: bool,
}

impl<T> Pooled<'_, T> {
    /// Closes the connection when the guard drops instead of returning it to the pool.
    pub fn discard(&mut self) {
        self.keep = false;
    }
}

impl<T> std::ops::Deref for Pooled<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.connection.as_ref().expect("held until drop")
    }
}

impl<T> std::ops::DerefMut for Pooled<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.connection.as_mut().expect("held until drop")
    }
}

impl<T> Drop for Pooled<'_, T> {
    fn drop(&mut self) {
        let connection = self.connection.take().expect("dropped once");
        let mut state = self.pool.state.lock();
        if self.keep {
            state.idle.push(connection);
        } else {
            state.opened -= 1;
        }
        drop(state);
        self.pool.available.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::error::StoreError;

    #[test]
    fn bounded_and_reused() {
        let made = Arc::new(AtomicUsize::new(0));
        let counter = made.clone();
        let pool = Arc::new(Pool::new(2, move || {
            Ok(counter.fetch_add(1, Ordering::SeqCst))
        }));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        pool.with(|_| Ok(())).unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert!(made.load(Ordering::SeqCst) <= 2);
        assert!(pool
            .with(|_| Err::<(), _>(StoreError::new("broken")))
            .is_err());
        pool.with(|_| Ok(())).unwrap();
    }

    #[test]
    fn taken_connections_come_back_unless_discarded() {
        let made = Arc::new(AtomicUsize::new(0));
        let counter = made.clone();
        let pool = Pool::new(1, move || Ok(counter.fetch_add(1, Ordering::SeqCst)));
        let first = *pool.take().unwrap();
        assert_eq!(
            *pool.take().unwrap(),
            first,
            "returned on drop, then reused"
        );
        pool.take().unwrap().discard();
        let fresh = *pool.take().unwrap();
        assert_ne!(fresh, first, "a discarded connection is not reused");
        assert_eq!(made.load(Ordering::SeqCst), 2);
    }
}

//! Throttling of failed console sign-ins: at most [`PER_CLIENT`] failures per client address and
//! [`OVERALL`] failures in all within [`WINDOW`]; past either, sign-ins are answered 429 until the
//! oldest failure leaves the window. Kept in the daemon's memory: each daemon counts the
//! attempts it answers.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr},
    sync::Mutex,
    time::{Duration, Instant},
};

/// Failed sign-ins one client address may make per window.
pub const PER_CLIENT: usize = 5;
/// Failed sign-ins all clients together may make per window.
pub const OVERALL: usize = 30;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Client addresses remembered at most (the oldest are dropped first).
const CLIENTS: usize = 10_000;

#[derive(Default)]
pub struct SignInThrottle {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    clients: HashMap<IpAddr, VecDeque<Instant>>,
    all: VecDeque<Instant>,
}

fn expire(q: &mut VecDeque<Instant>, now: Instant) {
    while q
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
    {
        q.pop_front();
    }
}

/// How long until the oldest of `q`'s failures leaves the window.
fn wait(q: &VecDeque<Instant>, now: Instant) -> Duration {
    q.front().map_or(Duration::ZERO, |t| {
        WINDOW.saturating_sub(now.saturating_duration_since(*t))
    })
}

impl SignInThrottle {
    /// `Err(wait)` when `client` (or everyone) failed too often within the window.
    pub fn check(&self, client: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let ip = client.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let Ok(mut s) = self.state.lock() else {
            return Ok(());
        };
        expire(&mut s.all, now);
        if s.all.len() >= OVERALL {
            return Err(wait(&s.all, now));
        }
        if let Some(q) = s.clients.get_mut(&ip) {
            expire(q, now);
            if q.len() >= PER_CLIENT {
                return Err(wait(q, now));
            }
        }
        Ok(())
    }

    /// Counts a failed sign-in of `client`.
    pub fn failed(&self, client: Option<IpAddr>, now: Instant) {
        let ip = client.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        s.all.push_back(now);
        if !s.clients.contains_key(&ip) && s.clients.len() >= CLIENTS {
            // Forget the clients whose failures all left the window, else the stalest.
            s.clients.retain(|_, q| {
                expire(q, now);
                !q.is_empty()
            });
            if s.clients.len() >= CLIENTS
                && let Some(stalest) = s
                    .clients
                    .iter()
                    .min_by_key(|(_, q)| q.back().copied())
                    .map(|(ip, _)| *ip)
            {
                s.clients.remove(&stalest);
            }
        }
        let q = s.clients.entry(ip).or_default();
        expire(q, now);
        q.push_back(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_held_after_its_failures_until_they_age_out() {
        let t = SignInThrottle::default();
        let a = Some(
            "10.0.0.1"
                .parse()
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        );
        let b = Some(
            "10.0.0.2"
                .parse()
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        );
        let t0 = Instant::now();
        for i in 0..PER_CLIENT {
            assert!(t.check(a, t0).is_ok(), "failure {i}");
            t.failed(a, t0 + Duration::from_secs(i as u64));
        }
        let held = t.check(a, t0 + Duration::from_secs(10));
        assert_eq!(held, Err(Duration::from_secs(50)));
        // Another client is not held.
        assert!(t.check(b, t0 + Duration::from_secs(10)).is_ok());
        // The first failure leaves the window after a minute: one more try.
        assert!(t.check(a, t0 + WINDOW).is_ok());
        t.failed(a, t0 + WINDOW);
        assert!(t.check(a, t0 + WINDOW).is_err());
    }

    #[test]
    fn everyone_is_held_after_too_many_failures_in_all() {
        let t = SignInThrottle::default();
        let t0 = Instant::now();
        for i in 0..OVERALL {
            let ip = IpAddr::V4(Ipv4Addr::new(10, 1, (i / 250) as u8, (i % 250) as u8));
            t.failed(Some(ip), t0);
        }
        let fresh = Some(IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9)));
        assert_eq!(t.check(fresh, t0), Err(WINDOW));
        assert!(t.check(fresh, t0 + WINDOW).is_ok());
    }
}

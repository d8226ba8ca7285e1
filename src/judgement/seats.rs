//! Seats: a check's `seats` must be within the plan's user count.

use super::{Case, Counts, Findings, Kind, Question, Tally};
use crate::entitlements::ZeroUserCount;
use crate::policy::Reason;

/// The seats asked for and the plan's user count (none: the plan sets none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeatsJudged {
    pub requested: u64,
    pub limit: Option<u64>,
}

pub struct Seats;

impl Kind for Seats {
    /// A disabled customer's count of 0 is none at all (BillaBear lists nothing for it),
    /// whatever `zero_user_count` says of an active customer's.
    fn judge(&self, case: &Case, _: &dyn Counts, found: &mut Findings) {
        let Question::Check(ask) = case.question else { return };
        let Some(requested) = ask.seats else { return };
        let limit = match (case.known.plan.user_count(), *case.settings.zero_user_count) {
            (0, ZeroUserCount::Unlimited) if !case.known.status.is_disabled() => None,
            (count, _) => Some(count),
        };
        if limit.is_some_and(|limit| requested > limit) {
            found.reasons.insert(Reason::SeatsExceeded);
        }
        found.seats = Some(SeatsJudged { requested, limit });
    }

    fn count(&self, _: &Case, _: &mut dyn Tally) {}
}

#[cfg(test)]
mod tests {
    use super::super::tests::{case, plan, seats};
    use super::*;
    use crate::domain::CustomerStatus;
    use crate::entitlements::{EntitlementSettings, Plan};

    fn judged(plan: Plan, n: u64, status: CustomerStatus, settings: &EntitlementSettings) -> Findings {
        let ask = seats(n);
        let mut found = Findings::default();
        case(plan, status, &ask, settings, |case| {
            Seats.judge(case, &super::super::tests::Uncounted, &mut found)
        });
        found
    }

    fn reasons(plan: Plan, n: u64) -> Vec<Reason> {
        judged(plan, n, CustomerStatus::Active, &Default::default()).reasons.iter().collect()
    }

    #[test]
    fn seats_fit_within_the_user_count_and_a_count_of_zero_is_read_as_configured() {
        assert_eq!(reasons(plan(), 10), []);
        assert_eq!(reasons(plan(), 11), [Reason::SeatsExceeded]);
        assert_eq!(reasons(Plan::default(), 500), [], "0 users: the plan sets none");
        let active = CustomerStatus::Active;
        assert_eq!(
            judged(Plan::default(), 500, active.clone(), &Default::default()).seats,
            Some(SeatsJudged { requested: 500, limit: None })
        );
        let strict =
            EntitlementSettings { zero_user_count: ZeroUserCount::None.into(), ..Default::default() };
        assert_eq!(
            judged(Plan::default(), 1, active.clone(), &strict).reasons.iter().collect::<Vec<_>>(),
            [Reason::SeatsExceeded]
        );
        assert!(judged(Plan::default(), 0, active, &strict).reasons.is_empty(), "0 seats always fit");
        let disabled = judged(Plan::default(), 1, CustomerStatus::Disabled, &Default::default());
        assert_eq!(
            (disabled.reasons.iter().collect::<Vec<_>>(), disabled.seats.unwrap().limit),
            (vec![Reason::SeatsExceeded], Some(0)),
            "a disabled customer's 0 is none"
        );
    }
}

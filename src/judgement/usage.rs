//! BillaBear's usage limits in money: the policy judges them (with the customer's status and
//! every other kind's reasons, [`super::verdict`]); this kind counts what an admitted write
//! adds to the estimate, and a hold for every kind (see `Tally::hold`).

use super::{Case, Counts, Findings, Kind, Question, Tally, Write};

pub struct UsageInMoney;

impl Kind for UsageInMoney {
    fn judge(&self, _: &Case, _: &dyn Counts, _: &mut Findings) {}

    fn count(&self, case: &Case, tally: &mut dyn Tally) {
        match case.question {
            Question::Write(Write::Event { target, code, value }) => tally.event(target, code, value),
            Question::Write(Write::Hold { amount, event }) => {
                tally.hold(case.customer, case.subject, amount, event)
            }
            Question::Check(_) => {}
        }
    }
}

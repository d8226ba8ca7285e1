//! The console's pages, as maud templates: plain HTML forms and links, readable and usable
//! without JavaScript; every value is escaped by maud.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use super::session::Flash;
use crate::audit::AuditRecord;
use crate::check::{Decision, PlanState};
use crate::health::Readiness;
use crate::limits::Limit;
use crate::outbox::{OutboxEvent, Stats};
use crate::overrides::OverrideRecord;
use crate::rules::RuleRecord;
use crate::transitions::recorded::CustomerRow;

/// What every signed-in page shows around its content.
pub struct Shell<'a> {
    /// The API key's name.
    pub operator: &'a str,
    /// The session's CSRF token, for the forms.
    pub csrf: &'a str,
    pub flash: Option<&'a Flash>,
}

/// An amount in minor units of `currency`, in its major unit ("12.34 EUR"); ISO 4217 says how
/// many minor units a major one holds (2 when the currency is unknown).
pub fn money(amount: i64, currency: &str) -> String {
    let exponent = iso_currency::Currency::from_code(currency).and_then(|c| c.exponent()).unwrap_or(2);
    let sign = if amount < 0 { "-" } else { "" };
    let magnitude = amount.unsigned_abs();
    let number = match 10u64.checked_pow(exponent.into()) {
        Some(scale) if exponent > 0 => {
            format!("{sign}{}.{:0width$}", magnitude / scale, magnitude % scale, width = exponent.into())
        }
        _ => format!("{sign}{magnitude}"),
    };
    if currency.is_empty() { number } else { format!("{number} {currency}") }
}

/// A time as operators read it: UTC, to the second.
pub fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn time_element(at: DateTime<Utc>) -> Markup {
    html! { time datetime=(at.to_rfc3339()) { (time(at)) } }
}

/// What a reason code means, for people.
pub fn reason_text(code: &str) -> &'static str {
    match code {
        "customer_disabled" => "BillaBear has disabled the customer",
        "disable_limit_exceeded" => "the estimate is over a DISABLE limit",
        "would_exceed_disable_limit" => "the cost asked about would take it over a DISABLE limit",
        "warning_limit_exceeded" => "the estimate is over a WARNING limit",
        "near_limit" => "the estimate is close to a DISABLE limit",
        "customer_not_found" => "BillaBear does not know this customer",
        "upstream_unavailable" => "BillaBear could not be asked; the fallback policy answered",
        "upstream_budget_exhausted" => "too many customers were being fetched; the fallback policy answered",
        "pending_usage_exceeds_limit" => "usage BillaBear has not counted yet takes it over a DISABLE limit",
        "override_allow" => "an operator's override allows it",
        "override_block" => "an operator's override blocks it",
        "override_raise" => "an operator's override raises its DISABLE limit",
        "feature_not_in_plan" => "the feature asked about is not in the customer's plan",
        "feature_limit_reached" => "the feature's limit would be passed",
        "seats_exceeded" => "more seats were asked for than the plan's user count",
        "rule_limit_exceeded" => "one of usage-gate's hard rules is full in its window",
        "would_exceed_rule_limit" => {
            "what was asked would take one of usage-gate's hard rules past its limit"
        }
        "soft_limit_exceeded" => {
            "one of usage-gate's soft rules is at or past its limit (allowed, with a warning)"
        }
        _ => "",
    }
}

/// A link to another page of a list: `path` with the non-empty `params`, URL-encoded.
fn page_link(path: &str, params: &[(&str, &str)]) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in params.iter().filter(|(_, value)| !value.is_empty()) {
        query.append_pair(key, value);
    }
    format!("{path}?{}", query.finish())
}

fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

fn status_badge(status: &str) -> Markup {
    html! { span class={ "badge " (status) } { (status) } }
}

/// A whole page; `shell` is none on the sign-in form.
pub fn page(shell: Option<&Shell>, title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · usage-gate console" }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header {
                    span class="brand" { "usage-gate" }
                    @if let Some(shell) = shell {
                        nav aria-label="Console" {
                            a href="/console/" { "Overview" }
                            a href="/console/customers" { "Customers" }
                            a href="/console/rules" { "Rules" }
                            a href="/console/outbox?status=dead" { "Dead letters" }
                            a href="/console/audit" { "Audit" }
                        }
                        form class="signout" method="post" action="/console/logout" {
                            (csrf_field(shell.csrf))
                            span { "Signed in as " strong { (shell.operator) } }
                            " "
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    @if let Some(flash) = shell.and_then(|s| s.flash) {
                        p class={ "flash " (flash.kind) } role=(if flash.kind == "error" { "alert" } else { "status" }) {
                            (flash.text)
                        }
                    }
                    (content)
                }
            }
        }
    }
}

/// The sign-in form.
pub fn login(csrf: &str, next: &str, problem: Option<&str>) -> Markup {
    let content = html! {
        @if let Some(problem) = problem {
            p class="flash error" role="alert" { (problem) }
        }
        form class="login" method="post" action="/console/login" {
            (csrf_field(csrf))
            input type="hidden" name="next" value=(next);
            label for="key" { "API key (with the " code { "admin" } " scope)" }
            input id="key" name="key" type="password" autocomplete="current-password" required autofocus;
            button type="submit" { "Sign in" }
        }
        p class="hint" { "The key is checked once and never kept in the browser: a session cookie is." }
    };
    page(None, "Sign in", content)
}

/// An error page for a request the console could not answer.
pub fn error(shell: Option<&Shell>, title: &str, message: &str) -> Markup {
    page(
        shell,
        title,
        html! { p class="flash error" role="alert" { (message) } p { a href="/console/" { "Back to the overview" } } },
    )
}

/// The overview's figures.
pub struct Overview {
    pub counts: Vec<(String, i64)>,
    /// Customers this replica has cached as unknown to BillaBear.
    pub unknown: u64,
    pub readiness: Readiness,
    pub outbox: Stats,
    pub delivery_lag_s: Option<f64>,
    pub transitions: Vec<AuditRecord>,
}

pub fn overview(shell: &Shell, o: &Overview) -> Markup {
    let count = |status: &str| o.counts.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n);
    let billabear = &o.readiness.checks.billabear;
    let content = html! {
        section aria-labelledby="by-status" {
            h2 id="by-status" { "Customers by status" }
            ul class="tiles" {
                @for status in ["blocked", "warning", "ok"] {
                    li class={ "tile " (status) } {
                        a href={ "/console/customers?status=" (status) } {
                            span class="figure" { (count(status)) } " " (status)
                        }
                    }
                }
                li class="tile unknown" {
                    span class="figure" { (o.unknown) } " unknown"
                    small { " (customers BillaBear does not know, cached by this replica)" }
                }
            }
        }
        section aria-labelledby="upstream" {
            h2 id="upstream" { "BillaBear" }
            p {
                @if billabear.ok { span class="badge ok" { "reachable" } }
                @else { span class="badge blocked" { "unreachable" } " " (billabear.detail) " — checks answer from the cache, events wait in the outbox" }
            }
        }
        section aria-labelledby="outbox" {
            h2 id="outbox" { "Outbox" }
            dl class="figures" {
                dt { "Pending" } dd { (o.outbox.pending) }
                dt { "Dead" } dd { a href="/console/outbox?status=dead" { (o.outbox.dead) } }
                dt { "Oldest pending" } dd { (format!("{:.0} s", o.outbox.oldest_pending_age_seconds)) }
                dt { "Delivery lag (mean, last 5 min)" }
                dd { @match o.delivery_lag_s { Some(lag) => (format!("{lag:.2} s")), None => "none delivered" } }
            }
        }
        section aria-labelledby="transitions" {
            h2 id="transitions" { "Recent decision transitions" }
            table {
                thead { tr { th scope="col" { "When" } th scope="col" { "Customer" } th scope="col" { "From" } th scope="col" { "To" } } }
                tbody {
                    @for r in &o.transitions {
                        tr {
                            td { (time_element(r.occurred_at)) }
                            td { @if let Some(c) = r.customer_id { a href={ "/console/customers/" (c) } { code { (c) } } } }
                            td { (status_badge(r.details["from"].as_str().unwrap_or(""))) }
                            td { (status_badge(r.details["to"].as_str().unwrap_or(""))) }
                        }
                    }
                    @if o.transitions.is_empty() { tr { td colspan="4" { "None yet." } } }
                }
            }
        }
    };
    page(Some(shell), "Overview", content)
}

/// How the customers page was asked.
pub struct CustomersQuery<'a> {
    pub status: Option<&'a str>,
    pub q: &'a str,
    pub page: i64,
    pub more: bool,
}

fn meter(estimate: Option<i64>, limit: Option<i64>, currency: &str) -> Markup {
    html! {
        @match (estimate, limit) {
            (Some(estimate), Some(limit)) if limit > 0 => {
                meter min="0" max=(limit) low=(limit * 8 / 10) high=(limit) optimum="0" value=(estimate.clamp(0, limit)) {
                    (estimate * 100 / limit) "%"
                }
                " " (money(estimate, currency)) " of " (money(limit, currency))
                " (" (i128::from(estimate) * 100 / i128::from(limit)) "%)"
            }
            (Some(estimate), _) => { (money(estimate, currency)) ", no DISABLE limit" }
            _ => { "not recorded yet" }
        }
    }
}

pub fn customers(shell: &Shell, query: &CustomersQuery, rows: &[CustomerRow]) -> Markup {
    let link = |page: i64| {
        let page = page.to_string();
        let status = query.status.unwrap_or("");
        page_link("/console/customers", &[("status", status), ("q", query.q), ("page", &page)])
    };
    let content = html! {
        form class="filters" method="get" action="/console/customers" {
            label for="status" { "Status" }
            select id="status" name="status" {
                option value="" selected[query.status.is_none()] { "any" }
                @for status in ["blocked", "warning", "ok"] {
                    option value=(status) selected[query.status == Some(status)] { (status) }
                }
            }
            label for="q" { "Customer id (or its start)" }
            input id="q" name="q" type="search" value=(query.q) maxlength="36" pattern="[0-9a-fA-F-]*";
            button type="submit" { "Filter" }
        }
        p class="hint" { "As usage-gate last recorded each customer: at every status change and every 5% of its lowest DISABLE limit. Closest to the limit first." }
        table {
            thead { tr { th scope="col" { "Customer" } th scope="col" { "Status" } th scope="col" { "Estimate against the lowest DISABLE limit" } th scope="col" { "Reasons" } th scope="col" { "Last change" } } }
            tbody {
                @for row in rows {
                    tr {
                        td { a href={ "/console/customers/" (row.customer_id) } { code { (row.customer_id) } } }
                        td { (status_badge(&row.status)) }
                        td { (meter(row.estimate, row.disable_limit, row.currency.as_deref().unwrap_or(""))) }
                        td { (row.reasons.join(", ")) }
                        td { (time_element(row.changed_at)) }
                    }
                }
                @if rows.is_empty() { tr { td colspan="5" { "No customer matches." } } }
            }
        }
        nav class="pages" aria-label="Pages" {
            @if query.page > 1 { a href=(link(query.page - 1)) rel="prev" { "Previous page" } }
            @if query.more { a href=(link(query.page + 1)) rel="next" { "Next page" } }
        }
    };
    page(Some(shell), "Customers", content)
}

/// Everything the customer page shows.
pub struct CustomerPage {
    pub decision: Decision,
    /// Its BillaBear plan, as the check's cache holds it.
    pub plan: Option<PlanState>,
    pub recorded: Option<CustomerRow>,
    /// BillaBear's list, or why it could not be had.
    pub limits: Result<Vec<Limit>, String>,
    pub overrides: Vec<OverrideRecord>,
    pub events: Vec<OutboxEvent>,
    pub audit: Vec<AuditRecord>,
    pub plot: Markup,
    /// `since` for the link to the last week's audit trail.
    pub week_ago: String,
    /// The subject its rules were judged for (`?subject=`), if one was asked.
    pub subject: Option<String>,
}

pub fn customer(shell: &Shell, p: &CustomerPage) -> Markup {
    let d = &p.decision;
    let id = d.customer_id.to_string();
    let base = format!("/console/customers/{id}");
    let currency = d.estimate.map(|e| e.currency.as_str().to_owned()).unwrap_or_default();
    let dead = p.events.iter().filter(|e| e.status == "dead").count();
    let content = html! {
        p { code { (id) } }
        section aria-labelledby="decision" {
            h2 id="decision" { "Decision" }
            p class="verdict" {
                (status_badge(d.status.as_str()))
                @if d.allowed { " allowed" } @else { " denied" }
                @if let Some(would) = d.would_block { " · would block without the override: " (would) }
            }
            @if d.reasons.iter().next().is_some() {
                ul class="reasons" {
                    @for reason in d.reasons.iter() {
                        li { code { (reason.code()) } " — " (reason_text(reason.code())) }
                    }
                }
            }
            dl class="figures" {
                @if let Some(e) = &d.estimate {
                    dt { "Projected estimate" } dd { (money(e.amount, &currency)) @if e.approximate { " (approximate)" } }
                    dt { "BillaBear's estimate" } dd { (money(e.billabear, &currency)) }
                    dt { "Pending (not yet counted by BillaBear)" } dd { (money(e.pending, &currency)) " in " (e.pending_events) " events" }
                    dt { "Reserved (open holds)" } dd { (money(e.reserved, &currency)) }
                }
                dt { "Lowest DISABLE limit" }
                dd { @match d.lowest_disable_limit() { Some(l) => (money(l, &currency)), None => "none" } }
                dt { "BillaBear customer status" }
                dd { @match &d.customer_status { Some(s) => (s.as_str()), None => "unknown" } }
                dt { "Answered from" } dd { (d.source.as_str()) @if d.fallback { " (fallback policy)" } }
                dt { "Data age" } dd { @match d.age_ms { Some(ms) => (format!("{:.1} s", ms as f64 / 1000.0)), None => "none" } }
                @if let Some(recorded) = &p.recorded {
                    dt { "Status since" } dd { (time_element(recorded.changed_at)) }
                }
            }
        }
        section aria-labelledby="usage" {
            h2 id="usage" { "Usage against the limit" }
            (p.plot)
        }
        section aria-labelledby="plan" {
            h2 id="plan" { "Plan (in BillaBear)" }
            @match &p.plan {
                None => p { "Not known: BillaBear could not be asked, or does not know the customer." },
                Some(state) => {
                    @let plan = &state.plan;
                    dl class="figures" {
                        dt { "User count" }
                        dd { @if plan.user_count() == 0 { "none set" } @else { (plan.user_count()) } }
                    }
                    @if plan.features().is_empty() {
                        p { "Its plan includes no features." }
                    } @else {
                        table {
                            thead { tr {
                                th scope="col" { "Feature" } th scope="col" { "Limit" } th scope="col" { "Used" }
                                th scope="col" { "Window" } th scope="col" { "Resets" }
                            } }
                            tbody {
                                @for (feature, counted) in plan.features().iter().zip(&state.counted) {
                                    tr {
                                        td { code { (feature.code.as_str()) } }
                                        td { @match feature.limit() { Some(limit) => (limit), None => "included, no count" } }
                                        @match counted {
                                            Some(c) => {
                                                td { (c.used) }
                                                td { (c.window.as_str().replace('_', " ")) }
                                                td { @if let Some(at) = DateTime::from_timestamp(c.bounds.end, 0) { (time_element(at)) } }
                                            }
                                            None => { td {} td {} td {} }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="rules" {
            h2 id="rules" { "Rules (usage-gate's own)" }
            form method="get" action=(base) class="inline" {
                label for="rules-subject" { "For subject" }
                input id="rules-subject" name="subject" type="text" maxlength="128" value=[p.subject.as_deref()];
                button type="submit" { "Show" }
            }
            @if d.rules.is_empty() {
                p {
                    "No rule binds this customer"
                    @if p.subject.is_some() { " or this subject" }
                    ". " a href="/console/rules" { "Rules" }
                }
            } @else {
                table {
                    thead { tr {
                        th scope="col" { "Rule" } th scope="col" { "Measure" } th scope="col" { "Window" }
                        th scope="col" { "Subject" } th scope="col" { "Used / limit" } th scope="col" { "Resets" }
                        th scope="col" { "State" }
                    } }
                    tbody {
                        @for r in &d.rules {
                            @let view = serde_json::to_value(r).unwrap_or_default();
                            tr {
                                td { code { (r.rule.id) } " " (r.rule.shape().mode.as_str()) }
                                td { (shape(&view["measure"])) }
                                td { (shape(&view["window"])) }
                                td { @if let Some(s) = &r.subject { code { (s.as_str()) } } @else { "whole customer" } }
                                td { (view["used"]) " / " (r.limit) }
                                td { @if let Some(at) = r.resets_at.and_then(|t| DateTime::from_timestamp_millis(t.0 as i64)) { (time_element(at)) } @else { "rolling" } }
                                td { @match r.reason { Some(reason) => code { (reason) }, None => "within" } }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="limits" {
            h2 id="limits" { "Usage limits (in BillaBear)" }
            @match &p.limits {
                Err(problem) => p class="flash error" { "BillaBear's limits could not be read: " (problem) },
                Ok(limits) => table {
                    thead { tr { th scope="col" { "Amount" } th scope="col" { "Action" } th scope="col" { "Limit id" } th scope="col" { span class="visually-hidden" { "Delete" } } } }
                    tbody {
                        @for limit in limits {
                            tr {
                                td { (money(limit.amount, &currency)) }
                                td { (limit.action.as_str()) }
                                td { code { (limit.id) } }
                                td {
                                    form method="post" action={ (base) "/usage-limits/" (limit.id) "/delete" } {
                                        (csrf_field(shell.csrf))
                                        button type="submit" class="danger" { "Delete" }
                                    }
                                }
                            }
                        }
                        @if limits.is_empty() { tr { td colspan="4" { "No usage limits." } } }
                    }
                },
            }
            form class="inline" method="post" action={ (base) "/usage-limits" } {
                (csrf_field(shell.csrf))
                label for="limit-amount" { "Amount (minor units)" }
                input id="limit-amount" name="amount" type="number" min="1" step="1" required;
                label for="limit-action" { "Action" }
                select id="limit-action" name="action" { option value="DISABLE" { "DISABLE" } option value="WARNING" { "WARNING" } }
                button type="submit" { "Create limit" }
            }
        }
        section aria-labelledby="overrides" {
            h2 id="overrides" { "Overrides" }
            table {
                thead { tr { th scope="col" { "Effect" } th scope="col" { "Reason" } th scope="col" { "By" } th scope="col" { "Expires" } th scope="col" { "State" } } }
                tbody {
                    @for o in &p.overrides {
                        tr {
                            td { (o.effect) @if let Some(amount) = o.amount { " " (money(amount, &currency)) } }
                            td { (o.reason) }
                            td { (o.created_by) }
                            td { (time_element(o.expires_at)) }
                            td {
                                @if o.active {
                                    form method="post" action={ (base) "/overrides/" (o.id) "/end" } {
                                        (csrf_field(shell.csrf))
                                        label for={ "end-" (o.id) } class="visually-hidden" { "Why end it" }
                                        input id={ "end-" (o.id) } name="reason" type="text" maxlength="255" placeholder="why (optional)";
                                        button type="submit" { "End now" }
                                    }
                                } @else {
                                    (o.ended_as.as_deref().unwrap_or("expired"))
                                    @if let Some(by) = &o.ended_by { " by " (by) }
                                }
                            }
                        }
                    }
                    @if p.overrides.is_empty() { tr { td colspan="5" { "No overrides." } } }
                }
            }
            form class="inline" method="post" action={ (base) "/overrides" } {
                (csrf_field(shell.csrf))
                label for="override-effect" { "Effect" }
                select id="override-effect" name="effect" {
                    option value="allow" { "allow" } option value="block" { "block" } option value="raise" { "raise the DISABLE limit to" }
                }
                label for="override-amount" { "Amount (minor units, raise only)" }
                input id="override-amount" name="amount" type="number" min="0" step="1";
                label for="override-reason" { "Reason" }
                input id="override-reason" name="reason" type="text" maxlength="500" required;
                label for="override-expires" { "For" }
                select id="override-expires" name="expires_in_hours" {
                    @for (hours, label) in [(1, "1 hour"), (8, "8 hours"), (24, "1 day"), (72, "3 days"), (168, "7 days"), (720, "30 days"), (2160, "90 days")] {
                        option value=(hours) selected[hours == 24] { (label) }
                    }
                }
                button type="submit" { "Create override" }
            }
        }
        section aria-labelledby="events" {
            h2 id="events" { "Undelivered events" }
            (events_table(shell, &p.events, &base))
            @if dead > 0 {
                form method="post" action="/console/outbox/retry" {
                    (csrf_field(shell.csrf))
                    input type="hidden" name="customer" value=(id);
                    input type="hidden" name="back" value=(base);
                    button type="submit" { "Retry all " (dead) " dead events of this customer" }
                }
            }
        }
        section aria-labelledby="trail" {
            h2 id="trail" { "Audit trail" }
            p { a href={ "/console/audit?customer=" (id) "&since=" (p.week_ago) } { "The last 7 days in the audit log" } }
            (audit_table(&p.audit, false))
        }
    };
    page(Some(shell), "Customer", content)
}

fn events_table(shell: &Shell, events: &[OutboxEvent], back: &str) -> Markup {
    html! {
        table {
            thead { tr {
                th scope="col" { "Id" } th scope="col" { "Event" } th scope="col" { "Customer or subscription" }
                th scope="col" { "Code" } th scope="col" { "Value" } th scope="col" { "Status" } th scope="col" { "Attempts" }
                th scope="col" { "BillaBear's answer" } th scope="col" { "Accepted" } th scope="col" { span class="visually-hidden" { "Retry" } }
            } }
            tbody {
                @for e in events {
                    tr {
                        td { (e.id) }
                        td { code { (e.event_id) } }
                        td {
                            @if let Some(c) = e.customer_id { a href={ "/console/customers/" (c) } { code { (c) } } }
                            @else if let Some(s) = e.subscription_id { "subscription " code { (s) } }
                        }
                        td { (e.code) }
                        td { (e.value) }
                        td { (status_badge(if e.status == "dead" { "blocked" } else { "warning" })) " " (e.status) }
                        td { (e.attempts) }
                        td { @if let Some(status) = e.upstream_status { (status) " " } (e.last_error.as_deref().unwrap_or("")) }
                        td { (time_element(e.received_at)) }
                        td {
                            @if e.status == "dead" {
                                form method="post" action={ "/console/outbox/" (e.id) "/retry" } {
                                    (csrf_field(shell.csrf))
                                    input type="hidden" name="back" value=(back);
                                    button type="submit" { "Retry" }
                                }
                            }
                        }
                    }
                }
                @if events.is_empty() { tr { td colspan="10" { "None." } } }
            }
        }
    }
}

/// The outbox page, one status at a time.
pub fn outbox(shell: &Shell, status: &str, events: &[OutboxEvent], next: Option<&str>) -> Markup {
    let back = format!("/console/outbox?status={status}");
    let content = html! {
        nav class="tabs" aria-label="Status" {
            @for s in ["dead", "pending"] {
                a href={ "/console/outbox?status=" (s) } aria-current=[(s == status).then_some("page")] { (s) }
            }
        }
        @if status == "dead" && !events.is_empty() {
            form method="post" action="/console/outbox/retry" {
                (csrf_field(shell.csrf))
                input type="hidden" name="back" value=(back);
                button type="submit" { "Retry every dead event" }
            }
        }
        (events_table(shell, events, &back))
        @if let Some(next) = next {
            nav class="pages" aria-label="Pages" { a href={ (back) "&cursor=" (next) } rel="next" { "Next page" } }
        }
    };
    page(Some(shell), if status == "dead" { "Dead letters" } else { "Pending events" }, content)
}

/// A rule's scope, measure or window as written (`{"calendar": "day", …}`), for people.
fn shape(value: &serde_json::Value) -> String {
    match value.as_object() {
        Some(o) => o
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k} {s}"),
                serde_json::Value::Object(o) if o.is_empty() => k.clone(),
                v => format!("{k} {v}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        None => value.to_string(),
    }
}

/// usage-gate's own limit rules: every one, and a form for another.
pub fn rules(shell: &Shell, rules: &[RuleRecord]) -> Markup {
    let content = html! {
        p { "Every rule that binds a customer must allow a check, an enforced event or a hold, with BillaBear's usage limits and the plan's (docs/api.md, Rules)." }
        table {
            thead { tr {
                th scope="col" { "Scope" } th scope="col" { "Measure" } th scope="col" { "Limit" }
                th scope="col" { "Window" } th scope="col" { "Mode" } th scope="col" { "Per subject" }
                th scope="col" { "Thresholds" } th scope="col" { "Description" } th scope="col" { "" }
            } }
            tbody {
                @for r in rules {
                    tr {
                        td { (shape(&r.scope)) } td { (shape(&r.measure)) } td { (r.limit) }
                        td { (shape(&r.window)) } td { (r.mode) }
                        td { @if r.per_subject { "yes " (shape(&r.subject_limits)) } @else { "no" } }
                        td { (r.thresholds.iter().map(|t| format!("{t}%")).collect::<Vec<_>>().join(" ")) }
                        td { (r.description.as_deref().unwrap_or("")) }
                        td {
                            form method="post" action={ "/console/rules/" (r.id) "/delete" } {
                                (csrf_field(shell.csrf))
                                button type="submit" { "Delete" }
                            }
                        }
                    }
                }
                @if rules.is_empty() { tr { td colspan="9" { "No rules." } } }
            }
        }
        h2 id="new-rule" { "New rule" }
        form class="inline" method="post" action="/console/rules" aria-labelledby="new-rule" {
            (csrf_field(shell.csrf))
            label for="rule-scope" { "Scope" }
            select id="rule-scope" name="scope" {
                option value="customer" { "customer" } option value="plan" { "plan" } option value="all" { "all customers" }
            }
            label for="rule-scope-id" { "Customer or plan id" }
            input id="rule-scope-id" name="scope_id" type="text" maxlength="36";
            label for="rule-measure" { "Measure" }
            select id="rule-measure" name="measure" { option value="cost" { "cost (minor units)" } option value="metric" { "metric (units)" } }
            label for="rule-metric" { "Metric code" }
            input id="rule-metric" name="metric" type="text" maxlength="255";
            label for="rule-limit" { "Limit" }
            input id="rule-limit" name="limit" type="number" min="1" step="1" required;
            label for="rule-window" { "Window" }
            select id="rule-window" name="window" {
                @for (value, label) in [("day", "day"), ("hour", "hour"), ("week", "week"), ("month", "month"), ("rolling", "rolling (seconds)"), ("billing_period", "billing period")] {
                    option value=(value) { (label) }
                }
            }
            label for="rule-zone" { "Time zone" }
            input id="rule-zone" name="time_zone" type="text" placeholder="UTC";
            label for="rule-rolling" { "Seconds (rolling)" }
            input id="rule-rolling" name="rolling_s" type="number" min="1" max="2678400" step="1";
            label for="rule-mode" { "Mode" }
            select id="rule-mode" name="mode" { option value="hard" { "hard (refuse)" } option value="soft" { "soft (warn)" } }
            label for="rule-per-subject" { "Per subject" }
            input id="rule-per-subject" name="per_subject" type="checkbox" value="on";
            label for="rule-thresholds" { "Thresholds (%)" }
            input id="rule-thresholds" name="thresholds" type="text" placeholder="80, 100";
            label for="rule-description" { "Description" }
            input id="rule-description" name="description" type="text" maxlength="500";
            button type="submit" { "Create rule" }
        }
    };
    page(Some(shell), "Rules", content)
}

fn audit_table(records: &[AuditRecord], full: bool) -> Markup {
    html! {
        table class="audit" {
            thead { tr {
                th scope="col" { "When" } th scope="col" { "Actor" } th scope="col" { "Action" }
                @if full { th scope="col" { "Customer" } }
                th scope="col" { "Target" } th scope="col" { "Outcome" } th scope="col" { "Details" }
            } }
            tbody {
                @for r in records {
                    tr {
                        td { (time_element(r.occurred_at)) }
                        td { (r.actor) }
                        td { code { (r.action) } }
                        @if full {
                            td { @if let Some(c) = r.customer_id { a href={ "/console/customers/" (c) } { code { (c) } } } }
                        }
                        td { (r.target_id.as_deref().unwrap_or("")) }
                        td { (r.outcome) @if let Some(s) = r.upstream_status { " (" (s) ")" } }
                        td { code class="details" { (r.details) } }
                    }
                }
                @if records.is_empty() { tr { td colspan=(if full { "7" } else { "6" }) { "No records." } } }
            }
        }
    }
}

/// How the audit page was asked (the API's filters).
#[derive(Debug, Default)]
pub struct AuditQuery<'a> {
    pub customer: &'a str,
    pub action: &'a str,
    pub actor: &'a str,
    pub since: &'a str,
    pub until: &'a str,
}

pub fn audit(shell: &Shell, query: &AuditQuery, records: &[AuditRecord], next: Option<&str>) -> Markup {
    let next_link = next.map(|cursor| {
        let filters = [
            ("customer", query.customer),
            ("action", query.action),
            ("actor", query.actor),
            ("since", query.since),
            ("until", query.until),
            ("cursor", cursor),
        ];
        page_link("/console/audit", &filters)
    });
    let content = html! {
        form class="filters" method="get" action="/console/audit" {
            label for="f-customer" { "Customer" }
            input id="f-customer" name="customer" type="text" value=(query.customer) maxlength="36";
            label for="f-action" { "Action" }
            input id="f-action" name="action" type="text" value=(query.action) placeholder="usage_limit.create" maxlength="255";
            label for="f-actor" { "Actor" }
            input id="f-actor" name="actor" type="text" value=(query.actor) maxlength="255";
            label for="f-since" { "Since" }
            input id="f-since" name="since" type="text" value=(query.since) placeholder="2026-11-22 or RFC 3339";
            label for="f-until" { "Until" }
            input id="f-until" name="until" type="text" value=(query.until) placeholder="2026-11-29 or RFC 3339";
            button type="submit" { "Filter" }
        }
        (audit_table(records, true))
        @if let Some(link) = next_link {
            nav class="pages" aria-label="Pages" { a href=(link) rel="next" { "Older records" } }
        }
    };
    page(Some(shell), "Audit log", content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_written_in_the_currencys_major_unit() {
        assert_eq!(money(12345, "EUR"), "123.45 EUR");
        assert_eq!(money(5, "USD"), "0.05 USD");
        assert_eq!(money(-250, "GBP"), "-2.50 GBP");
        assert_eq!(money(500, "JPY"), "500 JPY");
        assert_eq!(money(1234, "KWD"), "1.234 KWD");
        assert_eq!(money(1234, ""), "12.34");
        assert_eq!(money(i64::MIN, "EUR"), "-92233720368547758.08 EUR");
    }

    #[test]
    fn every_reason_code_is_explained() {
        for reason in crate::policy::Reason::ALL {
            assert!(!reason_text(reason.code()).is_empty(), "{}", reason.code());
        }
    }

    #[test]
    fn pages_escape_what_they_show() {
        let flash = Flash::error("<script>alert(1)</script>");
        let shell = Shell { operator: "ops\"><b>", csrf: "t\"x", flash: Some(&flash) };
        let html = error(Some(&shell), "Oops", "<img src=x>").into_string();
        assert!(!html.contains("<script>") && !html.contains("<img") && !html.contains("\"><b>"), "{html}");
        assert!(html.contains(r#"name="csrf" value="t&quot;x""#), "{html}");
    }
}

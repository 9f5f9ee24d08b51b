//! `GET /api/queues`: the state of each tier against its SLA. An operator sees the whole
//! deployment; everyone else sees their own agency's share.

use crate::domain::{AgencyId, Caller, Priority};
use crate::error::AppError;
use crate::ports::{Dispatcher, SchedulingIndex};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TierStats {
    pub tier: Priority,
    /// Messages waiting on the queue.
    pub backlog: u64,
    /// Messages a worker holds right now.
    pub in_flight: u64,
    pub dead_letters: u64,
    /// Seconds the oldest waiting task has waited (0 when none).
    pub oldest_waiting_seconds: u64,
    /// PRD SLA target; null for best effort.
    pub sla_seconds: Option<u64>,
    pub breaches_last_hour: u64,
}

/// One agency's share of a tier. Queue depths belong to every agency at once, so an agency's
/// figures come from the task indexes, one bounded page each ([`AGENCY_PAGE`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgencyTierStats {
    pub tier: Priority,
    /// The agency's tasks waiting in the tier: queued automated work and pending human work.
    pub backlog: u64,
    /// The agency's automated tasks a worker holds right now.
    pub in_flight: u64,
    /// Seconds the agency's oldest waiting task has waited (0 when none).
    pub oldest_waiting_seconds: u64,
    pub sla_seconds: Option<u64>,
    /// The agency's tasks that waited past the SLA, recorded in the last hour.
    pub breaches_last_hour: u64,
    /// False when a page did not hold everything: the counts are then lower bounds.
    pub exact: bool,
}

/// Index entries read per figure for one agency, so a member's request costs a bounded read
/// however deep the tiers are (at most 1 MB per page, DynamoDB's own page limit).
pub const AGENCY_PAGE: usize = 1000;

/// What `GET /api/queues` answers, by the caller's role.
#[derive(Debug, Clone, PartialEq)]
pub enum QueueView {
    /// For operators: every agency's work, from the queues themselves.
    System(Vec<TierStats>),
    Agency(AgencyId, Vec<AgencyTierStats>),
}

#[derive(Clone)]
pub struct QueueOverview {
    pub dispatcher: Arc<dyn Dispatcher>,
    pub index: Arc<dyn SchedulingIndex>,
}

impl QueueOverview {
    pub async fn tiers(&self) -> Result<Vec<TierStats>, AppError> {
        self.tiers_at(Utc::now()).await
    }

    /// The system-wide figures for an operator, the caller's agency's for anyone else.
    pub async fn view(&self, caller: &Caller) -> Result<QueueView, AppError> {
        let now = Utc::now();
        if caller.is_operator() {
            Ok(QueueView::System(self.tiers_at(now).await?))
        } else {
            let tiers = self.agency_tiers_at(&caller.agency, now).await?;
            Ok(QueueView::Agency(caller.agency.clone(), tiers))
        }
    }

    /// One agency's share of each tier as of `now`.
    pub async fn agency_tiers_at(
        &self,
        agency: &AgencyId,
        now: DateTime<Utc>,
    ) -> Result<Vec<AgencyTierStats>, AppError> {
        let (in_flight, in_flight_exact) = self.index.agency_in_flight(agency, AGENCY_PAGE).await?;
        let mut stats = Vec::new();
        for tier in Priority::ALL {
            let waiting = self
                .index
                .agency_waiting(*tier, agency, AGENCY_PAGE)
                .await?;
            let breaches = self
                .index
                .agency_breaches_between(
                    *tier,
                    agency,
                    now - chrono::Duration::hours(1),
                    now,
                    AGENCY_PAGE,
                )
                .await?;
            stats.push(AgencyTierStats {
                tier: *tier,
                backlog: waiting.count,
                in_flight: in_flight.get(tier).copied().unwrap_or(0),
                oldest_waiting_seconds: waiting
                    .oldest
                    .map_or(0, |since| (now - since).num_seconds().max(0) as u64),
                sla_seconds: tier.sla().map(|d| d.as_secs()),
                breaches_last_hour: breaches.count,
                exact: waiting.exact && breaches.exact && in_flight_exact,
            });
        }
        Ok(stats)
    }

    /// The overview as of `now`: waits and the breach window are measured from it.
    pub async fn tiers_at(&self, now: DateTime<Utc>) -> Result<Vec<TierStats>, AppError> {
        let mut stats = Vec::new();
        for tier in Priority::ALL {
            let depth = self.dispatcher.depth(*tier).await?;
            // The index keeps breached top-tier work apart: the oldest is either partition's first.
            let mut oldest = self.index.waiting(*tier, false, now, None, 1).await?;
            if tier.promoted() == *tier {
                oldest.extend(self.index.waiting(*tier, true, now, None, 1).await?);
            }
            let oldest_waiting_seconds = oldest
                .iter()
                .map(|w| (now - w.since).num_seconds().max(0) as u64)
                .max()
                .unwrap_or(0);
            stats.push(TierStats {
                tier: *tier,
                backlog: depth.waiting,
                in_flight: depth.in_flight,
                dead_letters: depth.dead_letters,
                oldest_waiting_seconds,
                sla_seconds: tier.sla().map(|d| d.as_secs()),
                breaches_last_hour: self
                    .index
                    .breaches_between(*tier, now - chrono::Duration::hours(1), now)
                    .await?,
            });
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Role, TaskId, TaskStatus, UserId};
    use crate::ports::TaskStore;
    use crate::testing::MemoryWorld;
    use serde_json::json;

    fn caller(agency: &str, role: Role) -> Caller {
        Caller {
            user: UserId::parse("u1").unwrap(),
            agency: AgencyId::parse(agency).unwrap(),
            role,
        }
    }

    async fn create(world: &MemoryWorld, agency: &str, body: serde_json::Value) -> TaskId {
        let created = world
            .services()
            .tasks
            .create(&caller(agency, Role::Manager), &body, None)
            .await
            .unwrap();
        TaskId::parse(created.task["id"].as_str().unwrap()).unwrap()
    }

    fn agency_view(view: QueueView) -> (AgencyId, Vec<AgencyTierStats>) {
        match view {
            QueueView::Agency(agency, tiers) => (agency, tiers),
            other => panic!("expected an agency's view, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_member_sees_only_their_agencys_figures_and_an_operator_sees_all() {
        let world = MemoryWorld::new();
        // acme: two people's normal tasks waiting, one automated task a worker holds.
        create(&world, "acme", json!({"title": "a", "priority": "normal"})).await;
        create(&world, "acme", json!({"title": "b", "priority": "normal"})).await;
        let held = create(
            &world,
            "acme",
            json!({"title": "c", "priority": "high", "executor": {"type": "echo"}}),
        )
        .await;
        let acme = AgencyId::parse("acme").unwrap();
        let mut task = world.store.get(&acme, held).await.unwrap().unwrap();
        let version = task.version;
        task.status = TaskStatus::InProgress;
        world.store.replace(&task, version).await.unwrap();
        // globex: a flood of critical work, past its SLA.
        for n in 0..5 {
            create(
                &world,
                "globex",
                json!({"title": format!("g{n}"), "priority": "critical"}),
            )
            .await;
        }
        let later = Utc::now() + chrono::Duration::minutes(2);
        world.services().sweeper.sweep(later).await.unwrap();
        let queues = world.services().queues;

        let (agency, tiers) =
            agency_view(queues.view(&caller("acme", Role::Member)).await.unwrap());
        assert_eq!(agency, acme);
        let tier = |t: Priority| tiers.iter().find(|s| s.tier == t).unwrap().clone();
        assert_eq!(
            (tier(Priority::Normal).backlog, tier(Priority::Normal).exact),
            (2, true)
        );
        assert_eq!(tier(Priority::High).in_flight, 1);
        let critical = tier(Priority::Critical);
        assert_eq!(
            (
                critical.backlog,
                critical.breaches_last_hour,
                critical.oldest_waiting_seconds
            ),
            (0, 0, 0),
            "globex's flood is not acme's"
        );

        let (_, tiers) = agency_view(queues.view(&caller("globex", Role::Manager)).await.unwrap());
        let critical = tiers.iter().find(|s| s.tier == Priority::Critical).unwrap();
        assert_eq!(critical.backlog, 5);
        let breaches = queues
            .agency_tiers_at(&AgencyId::parse("globex").unwrap(), later)
            .await
            .unwrap();
        let critical = breaches
            .iter()
            .find(|s| s.tier == Priority::Critical)
            .unwrap();
        assert_eq!(critical.breaches_last_hour, 5);
        assert!(critical.oldest_waiting_seconds >= 119, "{critical:?}");

        // The operator's view is the deployment's, from the queues.
        let view = queues.view(&caller("acme", Role::Operator)).await.unwrap();
        assert!(matches!(view, QueueView::System(ref tiers) if tiers.len() == Priority::ALL.len()));
    }

    #[tokio::test]
    async fn a_tier_deeper_than_a_page_is_reported_as_a_lower_bound() {
        let world = MemoryWorld::new();
        for n in 0..3 {
            create(
                &world,
                "acme",
                json!({"title": format!("t{n}"), "priority": "low"}),
            )
            .await;
        }
        let acme = AgencyId::parse("acme").unwrap();
        let waiting = world
            .index
            .agency_waiting(Priority::Low, &acme, 2)
            .await
            .unwrap();
        assert_eq!((waiting.count, waiting.exact), (2, false));
        let waiting = world
            .index
            .agency_waiting(Priority::Low, &acme, 3)
            .await
            .unwrap();
        assert_eq!((waiting.count, waiting.exact), (3, true));
    }
}

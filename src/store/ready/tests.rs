//! The ready index's turns by weight and its lanes by key.

use super::*;
use crate::model::Limit;
use crate::model::flow::parse_rates;

fn queue(ready: &mut Ready, tenant: &Tenant, key: Option<&str>) -> OperationId {
    let id = OperationId::generate();
    ready.queue(QueuedOp {
        id,
        kind: "k",
        tenant,
        key,
        due: None,
        priority: 0,
        expire: None,
    });
    id
}

#[test]
fn a_heavier_tenant_takes_more_per_turn() {
    let (heavy, light) = (
        Tenant::named("heavy").unwrap(),
        Tenant::named("light").unwrap(),
    );
    let mut ready = Ready::default();
    let mut owner = HashMap::new();
    for _ in 0..20 {
        for tenant in [&heavy, &light] {
            owner.insert(queue(&mut ready, tenant, None), tenant.clone());
        }
    }
    let weights = HashMap::from([(heavy.clone(), 3)]);
    let (taken, _) = ready.take(&[("k".into(), 8)], None, &weights, SystemTime::now());
    let of = |tenant: &Tenant| taken.iter().filter(|(id, _)| &owner[id] == tenant).count();
    assert_eq!((of(&heavy), of(&light)), (6, 2));
}

#[test]
fn a_full_key_is_skipped_without_holding_back_the_others() {
    let tenant = Tenant::default_tenant();
    let mut ready = Ready::default();
    ready.set_limits(
        "k",
        KindLimits {
            limits: vec![Limit {
                kind: "k".into(),
                scope: LimitScope::Key,
                concurrency: Some(1),
                rates: parse_rates("").unwrap(),
            }],
        },
    );
    let busy: Vec<_> = (0..1_000)
        .map(|_| queue(&mut ready, &tenant, Some("busy")))
        .collect();
    let other = queue(&mut ready, &tenant, Some("other"));
    let plain = queue(&mut ready, &tenant, None);
    let (taken, _) = ready.take(
        &[("k".into(), 10)],
        None,
        &HashMap::new(),
        SystemTime::now(),
    );
    let ids: Vec<_> = taken.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, vec![busy[0], other, plain]);
    // The busy key's slot is held: nothing more of it starts.
    let (again, _) = ready.take(
        &[("k".into(), 10)],
        None,
        &HashMap::new(),
        SystemTime::now(),
    );
    assert!(again.is_empty());
    // Its end gives the slot back.
    let held = Held {
        kind: Arc::from("k"),
        tenant: tenant.clone(),
        key: Some(Arc::from("busy")),
        holds: taken[0].1,
    };
    assert!(!ready.left(busy[0], Some(held)));
    assert!(ready.left(busy[0], None));
    let (next, _) = ready.take(
        &[("k".into(), 10)],
        None,
        &HashMap::new(),
        SystemTime::now(),
    );
    assert_eq!(
        next.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![busy[1]]
    );
}

//! Where a request goes: its model, from the header or the JSON body (read
//! only when routing needs it), and for `prefix` routing its text.

use super::*;
use crate::budget::Reserved;

/// Where a request goes: its model (the pool is looked up in the snapshot
/// of each pick) and, for `prefix` routing, its text's block hashes.
#[derive(Debug, Default)]
pub(super) struct Target {
    pub(super) model: Option<ModelName>,
    pub(super) chain: Vec<u64>,
    pub(super) text_len: usize,
    /// The bytes of its body held to read it, given back when it ends.
    pub(super) reserved: Option<Reserved>,
}

/// The outcome of looking for a request's pool.
pub(super) enum Routed {
    To(Target),
    /// No pool serves the model (or the request names none) and there is
    /// no default pool: 404.
    NoPool(Option<ModelName>),
    /// The body is too large to read for its model and there is no default
    /// pool to send it to: 413.
    TooLarge,
}

/// Finds the request's pool from the model header, or reads a JSON body
/// (within `routing.max_inspect_body_bytes`) for its `"model"` when the
/// header is absent and there are pools to choose from, or for its text when
/// the pool routes by prefix. Other requests are not looked into.
pub(super) async fn find_target(
    worker: &Worker,
    client: &mut Client,
    info: &RequestInfo,
    body: &mut Body,
    head_end: usize,
    header_model: Option<ModelName>,
    progress: &mut Progress,
) -> Result<Routed, Abort> {
    let mut target = Target {
        model: header_model,
        ..Target::default()
    };
    let by_prefix = |set: &ReplicaSet, pool: Option<usize>| {
        pool.is_some_and(|p| set.pools()[p].routing() == inferlb_core::Routing::Prefix)
    };
    let max = worker.config.model.max_inspect_body_bytes;
    // Decided on the worker's cached snapshot, without taking a reference
    // to it: the common request (no JSON body to read) touches no shared
    // reference count.
    {
        let mut snapshots = worker.snapshots.borrow_mut();
        let set = snapshots.load();
        let inspect = info.json
            && info.body != Framing::None
            && max > 0
            && ((target.model.is_none() && models::has_named_pools(set))
                || by_prefix(
                    set,
                    set.pool_for(target.model.as_ref().map(ModelName::as_str)),
                ));
        if !inspect {
            return Ok(
                if set
                    .pool_for(target.model.as_ref().map(ModelName::as_str))
                    .is_none()
                {
                    Routed::NoPool(target.model)
                } else {
                    Routed::To(target)
                },
            );
        }
    }
    let config = &worker.config;
    let limits = inspect::InspectLimits {
        max,
        gap: config.timeouts.body_read,
        whole: config.timeouts.request_read,
        min_rate: config.limits.min_body_rate_bytes_per_s,
    };
    let mut reserved = Reserved::none(&worker.inspect_budget);
    // Without a model header, a model that comes first is enough unless its
    // pool routes by prefix (which needs the text).
    let header_named = target.model.is_some();
    let enough = |model: &str| {
        let mut snapshots = worker.snapshots.borrow_mut();
        let set = snapshots.load();
        !header_named && !by_prefix(set, set.pool_for(Some(model)))
    };
    let inspected = inspect::read_body(
        client,
        info,
        body,
        head_end,
        limits,
        &mut reserved,
        progress,
        enough,
    )
    .await?;
    // Held for the request's life: while it is forwarded, and while it
    // waits for an autoscaling pool's first replica.
    target.reserved = Some(reserved);
    // The snapshot as it is once the body is in.
    let set = Arc::clone(worker.snapshots.borrow_mut().load());
    let no_route = target.model.is_none() && set.default_pool().is_none();
    match &inspected {
        inspect::Inspected::Whole => {}
        inspect::Inspected::ModelFirst(at) => {
            target.model = Some(ModelName::new(&client.request[at.clone()]));
        }
        inspect::Inspected::TooLarge if no_route => return Ok(Routed::TooLarge),
        // Refused rather than read: nothing else says where it goes.
        inspect::Inspected::NoBudget if no_route => {
            return Err(Abort::Respond(ErrorKind::InspectBusy))
        }
        // The model header or the default pool routes it, unread.
        inspect::Inspected::TooLarge | inspect::Inspected::NoBudget => {}
    }
    if inspected == inspect::Inspected::Whole {
        let payload = inspect::payload(&client.request[head_end..], info.body);
        // The model alone costs nothing on the heap; the text only when the
        // pool routes by prefix.
        if target.model.is_none() {
            target.model = match inspect::model_of(&payload) {
                inspect::BodyModel::Named(m) => Some(ModelName::new(m.as_bytes())),
                inspect::BodyModel::Absent => None,
                inspect::BodyModel::Duplicate => {
                    return Err(Abort::Respond(ErrorKind::AmbiguousModel))
                }
            };
        }
        if by_prefix(
            &set,
            set.pool_for(target.model.as_ref().map(ModelName::as_str)),
        ) {
            let parsed = inspect::Parsed::from(&payload);
            let mut text = Vec::new();
            parsed.text(&payload, &mut text);
            inferlb_core::prefix::chain(&text, &mut target.chain);
            target.text_len = text.len();
        }
    }
    if set
        .pool_for(target.model.as_ref().map(ModelName::as_str))
        .is_none()
    {
        return Ok(Routed::NoPool(target.model));
    }
    Ok(Routed::To(target))
}

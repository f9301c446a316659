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

/// What the request's head says of where it goes, copied out of the head.
pub(super) struct FromHead {
    /// The model header's value.
    pub(super) model: Option<ModelName>,
    /// A `multipart/form-data` body's boundary.
    pub(super) form: Option<Vec<u8>>,
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
    head_end: &mut usize,
    head: FromHead,
    progress: &mut Progress,
) -> Result<Routed, Abort> {
    let FromHead {
        model: header_model,
        form,
    } = head;
    let form = form.as_deref();
    let from_body = header_model.is_none();
    let mut target = Target {
        model: header_model,
        ..Target::default()
    };
    let max = worker.config.model.max_inspect_body_bytes;
    // Decided on the worker's cached snapshot, without taking a reference
    // to it: the common request (no JSON body to read) touches no shared
    // reference count.
    {
        let mut snapshots = worker.snapshots.borrow_mut();
        let set = snapshots.load();
        let wants_model = target.model.is_none() && models::has_named_pools(set);
        let inspect = info.body != Framing::None
            && max > 0
            && ((info.json
                && (wants_model
                    || prefix_limit(
                        set,
                        set.pool_for(target.model.as_ref().map(ModelName::as_str)),
                    )
                    .is_some()))
                // A form (an audio upload) is read only for its model.
                || (form.is_some() && wants_model));
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
        start_only: form.is_some(),
    };
    let mut reserved = Reserved::none(&worker.inspect_budget);
    let mut text = Vec::new();
    let inspected = {
        // Reading stops once the body's start holds what routing needs: its
        // model when no header names one, and for a pool that routes by
        // prefix the first `prefix.max_text_bytes` of its text.
        let header_model = target.model.clone();
        let mut model_scan = inspect::ModelScan::default();
        let mut text_scan = inspect::TextScan::default();
        let mut form_scan = inspect::FormScan::default();
        let early = |payload: &[u8]| {
            let mut snapshots = worker.snapshots.borrow_mut();
            let set = snapshots.load();
            let mut found = inspect::Early::default();
            if let Some(boundary) = form {
                // A form's model is all it is read for.
                return match form_scan.scan(payload, boundary) {
                    inspect::FieldSoFar::Found(range) => {
                        found.model = Some(range);
                        Some(found)
                    }
                    _ => None,
                };
            }
            let pool = match &header_model {
                Some(model) => set.pool_for(Some(model.as_str())),
                None => match model_scan.scan(payload) {
                    inspect::ModelSoFar::Found(range) => {
                        let model = std::str::from_utf8(&payload[range.clone()]).unwrap_or("");
                        found.model = Some(range);
                        set.pool_for(Some(model))
                    }
                    // Without pools of their own, models route nothing.
                    _ if !models::has_named_pools(set) => set.pool_for(None),
                    _ => return None,
                },
            };
            match prefix_limit(set, pool) {
                None => found.model.is_some().then_some(found),
                Some(limit) => {
                    found.text = text_scan.scan(payload, limit, &mut text);
                    found.text.then_some(found)
                }
            }
        };
        inspect::read_body(
            client,
            info,
            body,
            *head_end,
            limits,
            &mut reserved,
            progress,
            early,
        )
        .await?
    };
    // Held for the request's life: while it is forwarded, and while it
    // waits for an autoscaling pool's first replica.
    target.reserved = Some(reserved);
    // The snapshot as it is once the body is in.
    let set = Arc::clone(worker.snapshots.borrow_mut().load());
    let no_route = target.model.is_none() && set.default_pool().is_none();
    let body_start = *head_end;
    match &inspected {
        inspect::Inspected::Whole => {
            let payload = inspect::payload(&client.request[body_start..], info.body);
            // What the alias rewrite replaces: the model's JSON string, or
            // its form field's value; and with what.
            let mut rewrite = None;
            if let Some(boundary) = form {
                let field = inspect::model_field(&payload, boundary);
                target.model = field.clone().map(|range| ModelName::new(&payload[range]));
                rewrite = field
                    .zip(served_name(&set, target.model.as_ref()))
                    .map(|(token, served)| (token, served.as_bytes().to_vec()));
            } else {
                // The model alone costs nothing on the heap; the text only
                // when the pool routes by prefix.
                if from_body {
                    target.model = match inspect::model_of(&payload) {
                        inspect::BodyModel::Named(m) => Some(ModelName::new(m.as_bytes())),
                        inspect::BodyModel::Absent => None,
                        inspect::BodyModel::Duplicate => {
                            return Err(Abort::Respond(ErrorKind::AmbiguousModel))
                        }
                        // Nothing can be read from it, by the proxy or a replica.
                        inspect::BodyModel::Invalid => {
                            return Err(Abort::Respond(ErrorKind::InvalidJson))
                        }
                    };
                    rewrite = served_name(&set, target.model.as_ref())
                        .zip(inspect::model_token(&payload))
                        .map(|(served, token)| {
                            (token, serde_json::to_vec(served).unwrap_or_default())
                        });
                }
                let pool = set.pool_for(target.model.as_ref().map(ModelName::as_str));
                if let Some(limit) = prefix_limit(&set, pool) {
                    inspect::Parsed::from(&payload).text(&payload, &mut text);
                    text.truncate(limit);
                    target.prefix_text(&text);
                }
            }
            // A body naming the pool by an alias goes out with the name the
            // replicas serve: a sized body rewritten in place, a chunked one
            // anew.
            if let Some((token, name)) = rewrite {
                let payload = match info.body {
                    Framing::Chunked => payload.into_owned(),
                    _ => Vec::new(),
                };
                rewrite_model(client, info.body, head_end, &payload, token, &name);
            }
        }
        inspect::Inspected::Early(early) => {
            if let (Some(range), Some(_)) = (&early.model, form) {
                let at = body_start + range.start..body_start + range.end;
                target.model = Some(ModelName::new(&client.request[at]));
                if let Some(served) = served_name(&set, target.model.as_ref()) {
                    let name = served.as_bytes().to_vec();
                    rewrite_model(client, info.body, head_end, &[], range.clone(), &name);
                }
            } else if let Some(range) = &early.model {
                let at = body_start + range.start..body_start + range.end;
                target.model = Some(ModelName::new(&client.request[at]));
                // The rest is checked for a second "model" as it streams.
                let mut keys = inspect::ModelKeys::default();
                if keys.feed(&client.request[body_start..]) {
                    return Err(Abort::Respond(ErrorKind::AmbiguousModel));
                }
                progress.model_keys = Some(keys);
                if let Some(served) = served_name(&set, target.model.as_ref()) {
                    let token = range.start - 1..range.end + 1;
                    let name = serde_json::to_vec(served).unwrap_or_default();
                    rewrite_model(client, info.body, head_end, &[], token, &name);
                }
            }
            if early.text {
                target.prefix_text(&text);
            }
        }
        inspect::Inspected::TooLarge if no_route => return Ok(Routed::TooLarge),
        // Refused rather than read: nothing else says where it goes.
        inspect::Inspected::NoBudget if no_route => {
            return Err(Abort::Respond(ErrorKind::InspectBusy))
        }
        // The model header or the default pool routes it, unread.
        inspect::Inspected::TooLarge | inspect::Inspected::NoBudget => {}
    }
    if set
        .pool_for(target.model.as_ref().map(ModelName::as_str))
        .is_none()
    {
        return Ok(Routed::NoPool(target.model));
    }
    Ok(Routed::To(target))
}

impl Target {
    /// Keeps the block hashes of the text `prefix` routing matches.
    fn prefix_text(&mut self, text: &[u8]) {
        inferlb_core::prefix::chain(text, &mut self.chain);
        self.text_len = text.len();
    }
}

/// The name to forward instead of `model`, when the body names the pool by
/// another name (an alias, or the pool's name when `served_model_name`
/// differs). Not for a model that only falls to the default pool.
fn served_name<'s>(set: &'s ReplicaSet, model: Option<&ModelName>) -> Option<&'s str> {
    let model = model?.as_str();
    let spec = set.pools()[set.pool_named(model)?].spec();
    if spec.name.is_default() && spec.served_model_name.is_none() {
        return None;
    }
    let served = spec.served_name();
    (served != model).then_some(served)
}

/// Replaces the body's model (`token`, a range of `payload`, the body after
/// the head at `head_end` de-chunked: a JSON string, or a form field's
/// value) with `name` (as it goes in the body), and fixes the
/// framing: a sized body's `Content-Length` (the head's end moves when its
/// digits do), a chunked one re-sent whole as one chunk. Only that string
/// changes; the rest of the body is sent as the client wrote it.
fn rewrite_model(
    client: &mut Client,
    framing: Framing,
    head_end: &mut usize,
    payload: &[u8],
    token: std::ops::Range<usize>,
    name: &[u8],
) {
    let body = *head_end;
    match framing {
        Framing::Length(total) => {
            client
                .request
                .splice(body + token.start..body + token.end, name.iter().copied());
            let length = total + name.len() as u64 - token.len() as u64;
            *head_end = set_content_length(&mut client.request, body, length);
        }
        _ => {
            let mut rewritten = Vec::with_capacity(payload.len() + name.len() + 16);
            rewritten.extend_from_slice(&payload[..token.start]);
            rewritten.extend_from_slice(name);
            rewritten.extend_from_slice(&payload[token.end..]);
            client.request.truncate(body);
            let size = format!("{:x}\r\n", rewritten.len());
            client.request.extend_from_slice(size.as_bytes());
            client.request.extend_from_slice(&rewritten);
            client.request.extend_from_slice(b"\r\n0\r\n\r\n");
        }
    }
}

/// Sets the `Content-Length` the proxy wrote into the replica's head
/// (`request[..head_end]`) to `length`; returns where the head ends now.
fn set_content_length(request: &mut Vec<u8>, head_end: usize, length: u64) -> usize {
    // A header value holds no CRLF: this is the proxy's own line.
    const NAME: &[u8] = b"\r\nContent-Length: ";
    let Some(at) = request[..head_end]
        .windows(NAME.len())
        .position(|w| w == NAME)
    else {
        return head_end;
    };
    let digits = at + NAME.len();
    let end = digits
        + request[digits..head_end]
            .iter()
            .position(|&b| b == b'\r')
            .unwrap_or(0);
    let new = itoa::Buffer::new().format(length).as_bytes().to_vec();
    let moved = new.len() as isize - (end - digits) as isize;
    request.splice(digits..end, new);
    (head_end as isize + moved) as usize
}

/// How much text `prefix` routing matches, when `pool` routes by prefix.
fn prefix_limit(set: &ReplicaSet, pool: Option<usize>) -> Option<usize> {
    let pool = &set.pools()[pool?];
    (pool.routing() == inferlb_core::Routing::Prefix).then(|| pool.spec().prefix.max_text_bytes)
}

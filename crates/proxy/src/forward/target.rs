//! Where a request goes: its model, from the header or the JSON body (read
//! only when routing needs it), and for `prefix` routing its text.

use super::*;
use crate::budget::Reserved;
use inferlb_core::affinity::{self, Affinity, AffinityKey};

/// Where a request goes: its model (the pool is looked up in the snapshot
/// of each pick) and, for `prefix` routing, its text's block hashes.
#[derive(Debug, Default)]
pub(super) struct Target {
    pub(super) model: Option<ModelName>,
    pub(super) chain: Vec<u64>,
    pub(super) text_len: usize,
    /// The hash of its session affinity key, when its pool has affinity
    /// and the request carries the key.
    pub(super) affinity: Option<u64>,
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
///
/// ```text
/// needs the body? ──no──▶ routed on the header (or the default pool)
///       │ yes
///       ▼
/// read (until routing has what it needs) ─▶ take what was read ─▶ routed
/// ```
pub(super) async fn find_target(
    worker: &Worker,
    client: &mut Client,
    info: &RequestInfo,
    body: &mut Body,
    head_end: &mut usize,
    head: FromHead,
    progress: &mut Progress,
) -> Result<Routed, Abort> {
    let finder = Finder {
        worker,
        info,
        form: head.form.as_deref(),
        from_body: head.model.is_none(),
    };
    let mut target = Target {
        model: head.model,
        ..Target::default()
    };
    // Decided on the worker's cached snapshot, without taking a reference
    // to it: the common request (no JSON body to read) touches no shared
    // reference count.
    {
        let mut snapshots = worker.snapshots.borrow_mut();
        let set = snapshots.load();
        if !finder.reads_body(set, target.model.as_ref()) {
            target.affinity = affinity_in_head(set, &target, &client.request[..*head_end]);
            return Ok(routed(set, target));
        }
    }
    let (inspected, reserved, mut text) = finder
        .read(client, body, *head_end, target.model.as_ref(), progress)
        .await?;
    // Held for the request's life: while it is forwarded, and while it
    // waits for an autoscaling pool's first replica.
    target.reserved = Some(reserved);
    // The snapshot as it is once the body is in.
    let set = Arc::clone(worker.snapshots.borrow_mut().load());
    let no_route = target.model.is_none() && set.default_pool().is_none();
    match &inspected {
        inspect::Inspected::Whole => {
            finder.take_whole(client, head_end, &set, &mut target, &mut text)?
        }
        inspect::Inspected::Early(early) => {
            finder.take_early(client, head_end, &set, early, &mut target, progress)?;
            if early.text {
                target.prefix_text(&text);
            }
            target.affinity = early.affinity;
        }
        inspect::Inspected::TooLarge if no_route => return Ok(Routed::TooLarge),
        // Refused rather than read: nothing else says where it goes.
        inspect::Inspected::NoBudget if no_route => {
            return Err(Abort::Respond(ErrorKind::InspectBusy))
        }
        // The model header or the default pool routes it, unread.
        inspect::Inspected::TooLarge | inspect::Inspected::NoBudget => {}
    }
    if target.affinity.is_none() {
        target.affinity = affinity_in_head(&set, &target, &client.request[..*head_end]);
    }
    Ok(routed(&set, target))
}

/// The pool's session affinity, when the target's pool has one.
fn affinity_of<'s>(set: &'s ReplicaSet, model: Option<&ModelName>) -> Option<&'s Affinity> {
    if !set.any_affinity() {
        return None;
    }
    let pool = set.pool_for(model.map(ModelName::as_str))?;
    set.pools()[pool].spec().affinity.as_ref()
}

/// The JSON field the target's pool keys affinity on, if any.
fn json_affinity(set: &ReplicaSet, pool: Option<usize>) -> Option<&str> {
    if !set.any_affinity() {
        return None;
    }
    match &set.pools()[pool?].spec().affinity.as_ref()?.key {
        AffinityKey::Json(field) => Some(field),
        _ => None,
    }
}

/// The hash of a header or cookie affinity key in the head the replica
/// gets (`head`: the proxy's own, one header per line).
fn affinity_in_head(set: &ReplicaSet, target: &Target, head: &[u8]) -> Option<u64> {
    let value = match &affinity_of(set, target.model.as_ref())?.key {
        AffinityKey::Header(name) => header_values(head, name).next()?,
        AffinityKey::Cookie(name) => {
            header_values(head, "cookie").find_map(|line| cookie_value(line, name))?
        }
        AffinityKey::Json(_) => return None,
    };
    (!value.is_empty()).then(|| affinity::key_hash(value))
}

/// The values of the header `name` (lowercase) in a head, in order.
fn header_values<'h>(head: &'h [u8], name: &'h str) -> impl Iterator<Item = &'h [u8]> {
    head.split(|&b| b == b'\n').skip(1).filter_map(move |line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(name.as_bytes())
            .then(|| line[colon + 1..].trim_ascii())
    })
}

/// A cookie's value in a `Cookie` header (`a=1; sid=xyz`).
fn cookie_value<'h>(header: &'h [u8], name: &str) -> Option<&'h [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (&pair[..eq] == name.as_bytes()).then(|| {
            let value = &pair[eq + 1..];
            value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value)
        })
    })
}

/// The target's pool, or 404 when no pool serves its model.
fn routed(set: &ReplicaSet, target: Target) -> Routed {
    if set
        .pool_for(target.model.as_ref().map(ModelName::as_str))
        .is_none()
    {
        Routed::NoPool(target.model)
    } else {
        Routed::To(target)
    }
}

/// One request's look into its body: what it is, and what routing needs.
struct Finder<'a> {
    worker: &'a Worker,
    info: &'a RequestInfo,
    /// A `multipart/form-data` body's boundary.
    form: Option<&'a [u8]>,
    /// No header names the model: the body does.
    from_body: bool,
}

impl Finder<'_> {
    /// Whether routing needs the body: a JSON body for its model (when no
    /// header names one and there are pools to choose from) or for its text
    /// (a pool that routes by prefix); a form only for its model.
    fn reads_body(&self, set: &ReplicaSet, model: Option<&ModelName>) -> bool {
        let wants_model = model.is_none() && models::has_named_pools(set);
        let pool = || set.pool_for(model.map(ModelName::as_str));
        let prefix = || prefix_limit(set, pool()).is_some();
        let affinity = || json_affinity(set, pool()).is_some();
        self.info.body != Framing::None
            && self.worker.config.model.max_inspect_body_bytes > 0
            && ((self.info.json && (wants_model || prefix() || affinity()))
                || (self.form.is_some() && wants_model))
    }

    /// Reads the body until its start holds what routing needs (its model
    /// when no header names one, and for a pool that routes by prefix the
    /// first `prefix.max_text_bytes` of its text), or whole, within the
    /// limits. Returns how it ended, the bytes it holds against the budget,
    /// and the prefix text found while reading.
    async fn read(
        &self,
        client: &mut Client,
        body: &mut Body,
        head_end: usize,
        header_model: Option<&ModelName>,
        progress: &mut Progress,
    ) -> Result<(inspect::Inspected, Reserved, Vec<u8>), Abort> {
        let worker = self.worker;
        let config = &worker.config;
        let limits = inspect::InspectLimits {
            max: config.model.max_inspect_body_bytes,
            gap: config.timeouts.body_read,
            whole: config.timeouts.request_read,
            min_rate: config.limits.min_body_rate_bytes_per_s,
            start_only: self.form.is_some(),
        };
        let mut reserved = Reserved::none(&worker.inspect_budget);
        let mut text = Vec::new();
        let mut model_scan = inspect::ModelScan::default();
        let mut text_scan = inspect::TextScan::default();
        let mut form_scan = inspect::FormScan::default();
        let fits_whole = matches!(self.info.body, Framing::Length(n) if n <= limits.max as u64);
        let early = |payload: &[u8]| {
            let mut snapshots = worker.snapshots.borrow_mut();
            let set = snapshots.load();
            let mut found = inspect::Early::default();
            if let Some(boundary) = self.form {
                // A form's model is all it is read for.
                return match form_scan.scan(payload, boundary) {
                    inspect::FieldSoFar::Found(range) => {
                        found.model = Some(range);
                        Some(found)
                    }
                    _ => None,
                };
            }
            let pool = match header_model {
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
            // A JSON affinity key: looked for in what was read; a sized
            // body that fits the limit is read on (whole) until it is found.
            if let Some(field) = json_affinity(set, pool) {
                found.affinity = inspect::string_member(payload, field).map(affinity::key_hash);
                if found.affinity.is_none() && fits_whole {
                    return None;
                }
            }
            match prefix_limit(set, pool) {
                None => (found.model.is_some() || found.affinity.is_some()).then_some(found),
                Some(limit) => {
                    found.text = text_scan.scan(payload, limit, &mut text);
                    found.text.then_some(found)
                }
            }
        };
        let inspected = inspect::read_body(
            client,
            self.info,
            body,
            head_end,
            limits,
            &mut reserved,
            progress,
            early,
        )
        .await?;
        Ok((inspected, reserved, text))
    }

    /// Takes what a whole body says: its model (from the JSON or the form),
    /// the prefix text, and an alias to rewrite.
    fn take_whole(
        &self,
        client: &mut Client,
        head_end: &mut usize,
        set: &ReplicaSet,
        target: &mut Target,
        text: &mut Vec<u8>,
    ) -> Result<(), Abort> {
        let framing = self.info.body;
        let payload = inspect::payload(&client.request[*head_end..], framing);
        // What the alias rewrite replaces: the model's JSON string, or its
        // form field's value; and with what.
        let mut rewrite = None;
        if let Some(boundary) = self.form {
            let field = inspect::model_field(&payload, boundary);
            target.model = field.clone().map(|range| ModelName::new(&payload[range]));
            rewrite = field
                .zip(served_name(set, target.model.as_ref()))
                .map(|(token, served)| (token, served.as_bytes().to_vec()));
        } else {
            // The model alone costs nothing on the heap; the text only when
            // the pool routes by prefix.
            if self.from_body {
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
                rewrite = served_name(set, target.model.as_ref())
                    .zip(inspect::model_token(&payload))
                    .map(|(served, token)| (token, serde_json::to_vec(served).unwrap_or_default()));
            }
            let pool = set.pool_for(target.model.as_ref().map(ModelName::as_str));
            if let Some(field) = json_affinity(set, pool) {
                target.affinity = inspect::string_member(&payload, field)
                    .filter(|v| !v.is_empty())
                    .map(affinity::key_hash);
            }
            if let Some(limit) = prefix_limit(set, pool) {
                inspect::Parsed::from(&payload).text(&payload, text);
                text.truncate(limit);
                target.prefix_text(text);
            }
        }
        // A body naming the pool by an alias goes out with the name the
        // replicas serve: a sized body rewritten in place, a chunked one anew.
        if let Some((token, name)) = rewrite {
            let payload = match framing {
                Framing::Chunked => payload.into_owned(),
                _ => Vec::new(),
            };
            rewrite_model(client, framing, head_end, &payload, token, &name);
        }
        Ok(())
    }

    /// Takes the model found at the start of a body whose rest streams: a
    /// JSON body's rest is then watched for a second `"model"`; an alias is
    /// rewritten in the part already read.
    fn take_early(
        &self,
        client: &mut Client,
        head_end: &mut usize,
        set: &ReplicaSet,
        early: &inspect::Early,
        target: &mut Target,
        progress: &mut Progress,
    ) -> Result<(), Abort> {
        let Some(range) = &early.model else {
            return Ok(());
        };
        let body_start = *head_end;
        let at = body_start + range.start..body_start + range.end;
        target.model = Some(ModelName::new(&client.request[at]));
        let served = served_name(set, target.model.as_ref());
        let (token, name) = if self.form.is_some() {
            // A form field's value, as it is.
            (range.clone(), served.map(|s| s.as_bytes().to_vec()))
        } else {
            // The rest is checked for a second "model" as it streams.
            let mut keys = inspect::ModelKeys::default();
            if keys.feed(&client.request[body_start..]) {
                return Err(Abort::Respond(ErrorKind::AmbiguousModel));
            }
            progress.model_keys = Some(keys);
            // A JSON string, quotes included.
            let name = served.map(|s| serde_json::to_vec(s).unwrap_or_default());
            (range.start - 1..range.end + 1, name)
        };
        if let Some(name) = name {
            rewrite_model(client, self.info.body, head_end, &[], token, &name);
        }
        Ok(())
    }
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
    // An adapter is served under its own name.
    if spec.name.is_default() && spec.served_model_name.is_none() || spec.is_adapter(model) {
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

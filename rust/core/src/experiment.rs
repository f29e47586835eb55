//! Experiments (issue 14): a named split of users into arms by traffic shares, each arm a change
//! to what they are served. The one definition, validation and assignment of them: the CLI
//! (through the binding) validates what it stores, the API assigns users with [`assign`].
//!
//! An experiment as JSON (times in RFC 3339, both optional; the CLI's `start` sets `starts_at`):
//!
//! ```json
//! {"name": "fresh_mix", "salt": "fresh-mix-1", "starts_at": null, "ends_at": null,
//!  "arms": [
//!    {"name": "control", "share": 0.5, "kind": "config", "config": {}},
//!    {"name": "fresh_only", "share": 0.3, "kind": "sources", "sources": {"fresh": 1}},
//!    {"name": "random", "share": 0.2, "kind": "random"}
//!  ]}
//! ```
//!
//! Which arm changes a user's feed ([`user_arms`]): the experiments that run, read earliest start
//! first (then by name, [`sort_for_rule`]); the first whose arm for the user changes the feed
//! ([`Treatment::changes_feed`]) applies, the others label only. The API serves with this rule and
//! the pipeline computes a `config` arm's lists with it, so both call this one function.
//!
//! Assignment hashes (salt, user id) with FNV-1a 64 and MurmurHash3's 64-bit finalizer, both
//! written out below so that no library update can move a user to another arm; experiments with
//! different salts assign independently (layers).

use std::cmp::Ordering;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{deserialize_named, named_enum, BlendShares, ScoringConfig};
use crate::{Error, Result};

/// The [`ScoringConfig`] fields a `config` arm may set: those the pipeline reads when it scores a
/// user (the hybrid model's). The others are read once for a whole run: the snapshot's
/// `lookback_days`, the interaction matrix's `interaction_weights` and `history_half_life`, the
/// rows' `expires_after_hours` and `cache_ttl_seconds`, the serving model's `profile_terms` and
/// `profile_authors`, the request-time `sources` (a `sources` arm sets the blend's shares).
pub const CONFIG_ARM_FIELDS: [&str; 10] = [
    "weights",
    "collaborative",
    "weighting",
    "bm25_k1",
    "bm25_b",
    "recency_tau_days",
    "neighbors",
    "ridge_l2",
    "top_k",
    "retrieval",
];

/// The shares of an experiment's arms sum to 1 within this.
pub const SHARE_SUM_TOLERANCE: f64 = 1e-9;

named_enum! {
    /// What an arm changes, as its JSON `kind` names it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum ArmKind {
        /// A partial [`ScoringConfig`] (the pipeline computes the arm's lists with it).
        Config = "config",
        /// A source mix: the blend's shares for the arm's users instead of the run's.
        Sources = "sources",
        /// The seeded random feed (the design's Phase 1 baseline).
        Random = "random",
    }
}

/// An arm's change, with its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum Treatment {
    /// The override as given (fields absent from it keep the run's values); validated by
    /// merging it onto the default configuration.
    Config(Map<String, Value>),
    /// Every source's share; a source the arm does not name gets 0.
    Sources(BlendShares),
    Random,
}

impl Treatment {
    pub fn kind(&self) -> ArmKind {
        match self {
            Treatment::Config(_) => ArmKind::Config,
            Treatment::Sources(_) => ArmKind::Sources,
            Treatment::Random => ArmKind::Random,
        }
    }

    /// Whether the arm changes what its users are served: a `random` or `sources` arm always, a
    /// `config` arm when its override sets anything (`{}` is the control: the run's lists).
    pub fn changes_feed(&self) -> bool {
        match self {
            Treatment::Config(c) => !c.is_empty(),
            Treatment::Sources(_) | Treatment::Random => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Arm {
    pub name: String,
    /// The fraction of users in the arm, in (0, 1].
    pub share: f64,
    pub treatment: Treatment,
}

/// A validated experiment (see the module's documentation for its JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    pub name: String,
    /// Hashed with each user id; experiments with different salts split users independently.
    pub salt: String,
    /// `None`: not started.
    pub starts_at: Option<DateTime<Utc>>,
    /// `None`: runs until stopped.
    pub ends_at: Option<DateTime<Utc>>,
    pub arms: Vec<Arm>,
}

/// The JSON shape, read and written by serde; [`Experiment`] is this after validation.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExperimentJson {
    name: String,
    salt: String,
    #[serde(default)]
    starts_at: Option<DateTime<Utc>>,
    #[serde(default)]
    ends_at: Option<DateTime<Utc>>,
    arms: Vec<ArmJson>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArmJson {
    name: String,
    share: f64,
    kind: ArmKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sources: Option<Map<String, Value>>,
}

/// `e` with its argument moved under `prefix`: the part `strip` of it replaced by `prefix`
/// (`top_kk` -> `arms[0].config.top_kk`; `sources.blend.fresh` -> `arms[1].sources.fresh`).
fn under(prefix: &str, strip: &str, e: Error) -> Error {
    match e {
        Error::InvalidArgument { arg, message } => {
            let arg = if arg == strip {
                prefix.to_string()
            } else if let Some(rest) = arg.strip_prefix(&format!("{strip}.")) {
                format!("{prefix}.{rest}")
            } else {
                format!("{prefix}.{arg}")
            };
            Error::invalid(arg, message)
        }
        other => other,
    }
}

/// A name of an experiment or an arm: non-empty, letters, digits, `_`, `-` and `.` only (the
/// served log writes `experiment:arm`).
fn check_name(arg: String, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(arg, "must not be empty"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(Error::invalid(
            arg,
            format!("may hold only letters, digits, '_', '-' and '.', found {c:?} in {name:?}"),
        ));
    }
    Ok(())
}

/// Traffic shares: each in (0, 1], together 1 (within [`SHARE_SUM_TOLERANCE`]). `arg` names the
/// list (`shares`, `arms`); a bad share is named by its index (`arms[1].share`, `shares[1]`).
pub fn check_shares(arg: &str, share_arg: impl Fn(usize) -> String, shares: &[f64]) -> Result<()> {
    if shares.is_empty() {
        return Err(Error::invalid(arg.to_string(), "needs at least one share"));
    }
    for (i, &s) in shares.iter().enumerate() {
        if !(s.is_finite() && s > 0.0 && s <= 1.0) {
            return Err(Error::invalid(
                share_arg(i),
                format!("must be in (0, 1], got {s}"),
            ));
        }
    }
    let sum: f64 = shares.iter().sum();
    if (sum - 1.0).abs() > SHARE_SUM_TOLERANCE {
        return Err(Error::invalid(
            arg.to_string(),
            format!("shares must sum to 1, got {sum}"),
        ));
    }
    Ok(())
}

/// A `sources` arm's mix: the sources it names, every other one 0.
fn parse_source_mix(arg: &str, given: &Map<String, Value>) -> Result<BlendShares> {
    let mut mix: Map<String, Value> = BlendShares::SOURCES
        .iter()
        .map(|s| (s.as_str().to_string(), Value::from(0.0)))
        .collect();
    mix.extend(given.clone());
    let shares: BlendShares =
        deserialize_named("mix", Value::Object(mix)).map_err(|e| under(arg, "mix", e))?;
    shares
        .validate()
        .map_err(|e| under(arg, "sources.blend", e))?;
    Ok(shares)
}

fn parse_arm(i: usize, arm: ArmJson) -> Result<Arm> {
    let at = |field: &str| format!("arms[{i}].{field}");
    check_name(at("name"), &arm.name)?;
    let only_for = |field: &str, kind: &str| {
        Error::invalid(
            at(field),
            format!(
                "is only for kind \"{kind}\", this arm is \"{}\"",
                arm.kind.as_str()
            ),
        )
    };
    let treatment = match arm.kind {
        ArmKind::Config => {
            if arm.sources.is_some() {
                return Err(only_for("sources", "sources"));
            }
            let config = arm.config.ok_or_else(|| {
                Error::invalid(
                    at("config"),
                    "required for kind \"config\" (a partial ScoringConfig, {} for none)",
                )
            })?;
            ScoringConfig::deserialize_validated(Value::Object(config.clone()))
                .map_err(|e| under(&at("config"), "config", e))?;
            if let Some(field) = config
                .keys()
                .find(|k| !CONFIG_ARM_FIELDS.contains(&k.as_str()))
            {
                return Err(Error::invalid(
                    at(&format!("config.{field}")),
                    format!(
                        "a config arm cannot set {field}: the pipeline reads it once for the \
                         whole run (an arm may set {CONFIG_ARM_FIELDS:?}; a sources arm sets the \
                         blend's shares)"
                    ),
                ));
            }
            Treatment::Config(config)
        }
        ArmKind::Sources => {
            if arm.config.is_some() {
                return Err(only_for("config", "config"));
            }
            let given = arm.sources.ok_or_else(|| {
                Error::invalid(
                    at("sources"),
                    "required for kind \"sources\" (each source's share)",
                )
            })?;
            Treatment::Sources(parse_source_mix(&at("sources"), &given)?)
        }
        ArmKind::Random => {
            if arm.config.is_some() {
                return Err(only_for("config", "config"));
            }
            if arm.sources.is_some() {
                return Err(only_for("sources", "sources"));
            }
            Treatment::Random
        }
    };
    Ok(Arm {
        name: arm.name,
        share: arm.share,
        treatment,
    })
}

impl Experiment {
    /// Reads and validates an experiment from any serde source (JSON text; a Python dict,
    /// through the binding). Every error starts with the field's path (`arms[1].share: ...`,
    /// `arms[0].config.top_kk: unknown field ...`; `experiment: ...` when the whole is not an
    /// object).
    pub fn deserialize_validated<'de, D: serde::Deserializer<'de>>(source: D) -> Result<Self> {
        let raw: ExperimentJson = deserialize_named("experiment", source)?;
        check_name("name".to_string(), &raw.name)?;
        if raw.salt.trim().is_empty() {
            return Err(Error::invalid("salt", "must not be empty"));
        }
        if let (Some(start), Some(end)) = (raw.starts_at, raw.ends_at) {
            if end <= start {
                return Err(Error::invalid(
                    "ends_at",
                    format!(
                        "must be after starts_at ({}), got {}",
                        start.to_rfc3339(),
                        end.to_rfc3339()
                    ),
                ));
            }
        }
        if raw.arms.len() < 2 {
            return Err(Error::invalid(
                "arms",
                format!("needs at least 2 arms, got {}", raw.arms.len()),
            ));
        }
        for (i, arm) in raw.arms.iter().enumerate() {
            if let Some(j) = raw.arms[..i].iter().position(|a| a.name == arm.name) {
                return Err(Error::invalid(
                    format!("arms[{i}].name"),
                    format!("{:?} is the name of arms[{j}] already", arm.name),
                ));
            }
        }
        let shares: Vec<f64> = raw.arms.iter().map(|a| a.share).collect();
        check_shares("arms", |i| format!("arms[{i}].share"), &shares)?;
        let arms = raw
            .arms
            .into_iter()
            .enumerate()
            .map(|(i, a)| parse_arm(i, a))
            .collect::<Result<Vec<_>>>()?;
        // to the microsecond, as PostgreSQL keeps them: the stored definition and its columns agree
        let micros = |t: Option<DateTime<Utc>>| t.map(|t| t.trunc_subsecs(6));
        Ok(Experiment {
            name: raw.name,
            salt: raw.salt,
            starts_at: micros(raw.starts_at),
            ends_at: micros(raw.ends_at),
            arms,
        })
    }

    /// Parses and validates JSON text (see [`Experiment::deserialize_validated`]).
    pub fn from_json(s: &str) -> Result<Self> {
        let mut de = serde_json::Deserializer::from_str(s);
        let e = Self::deserialize_validated(&mut de)?;
        de.end()
            .map_err(|e| Error::invalid("experiment", e.to_string()))?;
        Ok(e)
    }

    /// The normalized JSON: every field present, a `sources` arm with all four shares.
    pub fn to_json(&self) -> String {
        let raw = ExperimentJson {
            name: self.name.clone(),
            salt: self.salt.clone(),
            starts_at: self.starts_at,
            ends_at: self.ends_at,
            arms: self
                .arms
                .iter()
                .map(|a| ArmJson {
                    name: a.name.clone(),
                    share: a.share,
                    kind: a.treatment.kind(),
                    config: match &a.treatment {
                        Treatment::Config(c) => Some(c.clone()),
                        _ => None,
                    },
                    sources: match &a.treatment {
                        Treatment::Sources(s) => match serde_json::to_value(s) {
                            Ok(Value::Object(m)) => Some(m),
                            _ => unreachable!("BlendShares serializes as an object"),
                        },
                        _ => None,
                    },
                })
                .collect(),
        };
        serde_json::to_string(&raw).expect("an experiment always serializes")
    }

    /// Whether the experiment's window holds `now`: started, and not past its end. (Stopping is
    /// recorded beside the definition, by whoever stores it.)
    pub fn is_running_at(&self, now: DateTime<Utc>) -> bool {
        self.starts_at.is_some_and(|s| s <= now) && self.ends_at.is_none_or(|e| now < e)
    }

    /// The arm of `user_id` (see [`assign`]).
    pub fn arm_of(&self, user_id: &str) -> &Arm {
        let point = assignment_point(&self.salt, user_id);
        &self.arms[cut(point, self.arms.iter().map(|a| a.share))]
    }
}

/// The order [`user_arms`] reads experiments in: earliest start first, then by name (names are
/// unique). An experiment not started sorts last.
pub fn rule_order(a: &Experiment, b: &Experiment) -> Ordering {
    let start = |e: &Experiment| (e.starts_at.is_none(), e.starts_at);
    start(a).cmp(&start(b)).then_with(|| a.name.cmp(&b.name))
}

/// Sorts `experiments` into [`rule_order`].
pub fn sort_for_rule(experiments: &mut [Experiment]) {
    experiments.sort_by(rule_order);
}

/// A user's arm in each running experiment, and the one that changes their feed.
#[derive(Debug, Clone, PartialEq)]
pub struct UserArms<'a> {
    /// Each experiment given, with the user's arm in it, in the order given.
    pub arms: Vec<(&'a Experiment, &'a Arm)>,
    /// The index in `arms` of the arm that applies: the first whose treatment
    /// [changes the feed](Treatment::changes_feed); `None` when none does.
    pub applied: Option<usize>,
}

impl<'a> UserArms<'a> {
    /// The experiment and arm that apply, if one does.
    pub fn applied_arm(&self) -> Option<(&'a Experiment, &'a Arm)> {
        self.applied.map(|i| self.arms[i])
    }
}

/// `user_id`'s arms in `running` (the experiments that run, in [`rule_order`]: the caller
/// filters and sorts them, once for many users) and the one that applies. At most one arm changes
/// a user's feed, so that each experiment compares its arms on users no other experiment changes
/// differently; layers still split users independently.
pub fn user_arms<'a>(
    running: impl IntoIterator<Item = &'a Experiment>,
    user_id: &str,
) -> UserArms<'a> {
    let mut out = UserArms {
        arms: Vec::new(),
        applied: None,
    };
    for e in running {
        let arm = e.arm_of(user_id);
        if out.applied.is_none() && arm.treatment.changes_feed() {
            out.applied = Some(out.arms.len());
        }
        out.arms.push((e, arm));
    }
    out
}

/// [`user_arms`] for many users at once (the pipeline's form): row-major `users x experiments`,
/// the index of each user's arm in each of `experiments` (in the order given), and for each user
/// the index of the experiment whose arm applies (-1: none). `experiments` are the running ones,
/// in any order: they are read in [`rule_order`].
pub fn arm_table<S: AsRef<str>>(
    experiments: &[Experiment],
    user_ids: &[S],
) -> (Vec<i32>, Vec<i32>) {
    let mut order: Vec<usize> = (0..experiments.len()).collect();
    order.sort_by(|&a, &b| rule_order(&experiments[a], &experiments[b]));
    let n = experiments.len();
    let mut arms = vec![0i32; user_ids.len() * n];
    let mut applied = vec![-1i32; user_ids.len()];
    for (u, user) in user_ids.iter().enumerate() {
        let got = user_arms(order.iter().map(|&i| &experiments[i]), user.as_ref());
        for (&i, (e, arm)) in order.iter().zip(&got.arms) {
            let index = e.arms.iter().position(|a| std::ptr::eq(a, *arm));
            arms[u * n + i] = index.expect("an experiment's own arm") as i32;
        }
        if let Some(k) = got.applied {
            applied[u] = order[k] as i32;
        }
    }
    (arms, applied)
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`, continuing from `hash`.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= b as u64;
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// MurmurHash3's 64-bit finalizer: FNV-1a alone leaves related inputs (one user under two
/// salts) with related high bits; this mixes every input bit into every output bit.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The user's point in [0, 1) under `salt`: `fmix64(FNV-1a 64(salt, 0xFF, user_id))`, its top 53
/// bits over 2^53. The 0xFF byte never occurs in UTF-8, so no (salt, user id) pair reads as
/// another. `user_id` is the id as text; for UUIDs, the lowercase hyphenated form (what the API
/// and Python's `str(uuid)` write).
pub fn assignment_point(salt: &str, user_id: &str) -> f64 {
    let h = fnv1a(
        fnv1a(fnv1a(FNV_OFFSET_BASIS, salt.as_bytes()), &[0xff]),
        user_id.as_bytes(),
    );
    (fmix64(h) >> 11) as f64 / (1u64 << 53) as f64
}

/// The index of the arm of `user_id` among arms with these `shares` (validated with
/// [`check_shares`]): the first whose cumulative share exceeds the user's
/// [`assignment_point`]. Stable across processes, machines and languages.
pub fn assign(salt: &str, user_id: &str, shares: &[f64]) -> usize {
    cut(assignment_point(salt, user_id), shares.iter().copied())
}

/// The index of the first share whose cumulative sum exceeds `point`.
fn cut(point: f64, shares: impl ExactSizeIterator<Item = f64>) -> usize {
    let n = shares.len();
    let mut cumulative = 0.0;
    for (i, s) in shares.enumerate() {
        cumulative += s;
        if point < cumulative {
            return i;
        }
    }
    // the shares' sum may round to just below 1
    n.saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        Experiment::from_json(json).unwrap_err().to_string()
    }

    /// A valid experiment's JSON with `arms` in it.
    fn with_arms(arms: &str) -> String {
        format!(r#"{{"name": "e1", "salt": "s1", "arms": {arms}}}"#)
    }

    const TWO_ARMS: &str = r#"[{"name": "control", "share": 0.5, "kind": "config", "config": {}},
                               {"name": "random", "share": 0.5, "kind": "random"}]"#;

    /// Deterministic user ids shaped like UUIDs, close to each other (a hard case for a hash).
    fn user_ids(n: usize) -> impl Iterator<Item = String> {
        (0..n).map(|i| format!("00000000-0000-4000-8000-{i:012x}"))
    }

    #[test]
    fn fnv1a_is_the_published_function() {
        // the FNV test vectors (www.isthe.com/chongo/tech/comp/fnv)
        assert_eq!(fnv1a(FNV_OFFSET_BASIS, b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(FNV_OFFSET_BASIS, b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a(FNV_OFFSET_BASIS, b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn assignment_is_stable_a_fixed_vector() {
        // Changing any of these moves users between arms of running experiments: never do. (The
        // points were checked against an independent few-line Python version of the formula.)
        let shares = [0.2, 0.3, 0.5];
        for (salt, user, arm, point) in [
            ("s1", "00000000-0000-4000-8000-000000000000", 1, "0.378749"),
            ("s1", "6f1c2a52-3d4e-4b8f-9a0b-1c2d3e4f5a6b", 2, "0.781779"),
            ("s2", "6f1c2a52-3d4e-4b8f-9a0b-1c2d3e4f5a6b", 2, "0.724772"),
            (
                "layer-b",
                "b5e0b9a6-8f1a-4c9e-8d3b-2a7f6e5d4c3b",
                0,
                "0.084581",
            ),
            ("", "x", 2, "0.700537"),
        ] {
            assert_eq!(
                format!("{:.6}", assignment_point(salt, user)),
                point,
                "{salt} {user}"
            );
            assert_eq!(assign(salt, user, &shares), arm, "{salt} {user}");
        }
    }

    #[test]
    fn shares_are_respected_within_sampling_error() {
        let shares = [0.1, 0.3, 0.6];
        let n = 100_000;
        let mut counts = [0usize; 3];
        for user in user_ids(n) {
            counts[assign("shares-test", &user, &shares)] += 1;
        }
        for (c, p) in counts.iter().zip(shares) {
            let expected = n as f64 * p;
            let sigma = (n as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (*c as f64 - expected).abs() < 4.5 * sigma,
                "{counts:?} for shares {shares:?}"
            );
        }
    }

    #[test]
    fn two_salts_assign_independently() {
        // layers: a user's arm in one experiment says nothing of their arm in the other
        let (a, b) = ([0.2, 0.3, 0.5], [0.5, 0.5]);
        let n = 100_000;
        let mut table = [[0f64; 2]; 3];
        for user in user_ids(n) {
            table[assign("layer-a", &user, &a)][assign("layer-b", &user, &b)] += 1.0;
        }
        let rows: Vec<f64> = table.iter().map(|r| r.iter().sum()).collect();
        let cols: Vec<f64> = (0..2).map(|j| table.iter().map(|r| r[j]).sum()).collect();
        let mut chi2 = 0.0;
        for i in 0..3 {
            for j in 0..2 {
                let expected = rows[i] * cols[j] / n as f64;
                chi2 += (table[i][j] - expected).powi(2) / expected;
            }
        }
        // 2 degrees of freedom: 13.8 is the 0.999 quantile
        assert!(chi2 < 13.8, "chi-square {chi2} for {table:?}");
    }

    #[test]
    fn a_valid_experiment_round_trips_normalized() {
        let e = Experiment::from_json(
            r#"{"name": "fresh_mix", "salt": "fm-1", "starts_at": "2026-12-01T00:00:00Z",
                "ends_at": "2026-12-15T00:00:00Z",
                "arms": [{"name": "control", "share": 0.5, "kind": "config", "config": {"top_k": 50}},
                         {"name": "fresh_only", "share": 0.3, "kind": "sources", "sources": {"fresh": 1}},
                         {"name": "random", "share": 0.2, "kind": "random"}]}"#,
        )
        .unwrap();
        assert_eq!(e.arms.len(), 3);
        let Treatment::Sources(mix) = &e.arms[1].treatment else {
            panic!("{e:?}")
        };
        assert_eq!(mix.as_array(), [0.0, 1.0, 0.0, 0.0]);
        let again = Experiment::from_json(&e.to_json()).unwrap();
        assert_eq!(again, e);
        let v: Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["arms"][1]["sources"]["personalized"], 0.0);
        assert_eq!(v["arms"][0]["config"], serde_json::json!({"top_k": 50}));
        assert!(v["arms"][2].get("config").is_none());
        let start: DateTime<Utc> = "2026-12-01T00:00:00Z".parse().unwrap();
        let precise = Experiment::from_json(&with_arms(TWO_ARMS).replace(
            r#""arms""#,
            r#""starts_at": "2026-12-01T00:00:00.123456789Z", "arms""#,
        ))
        .unwrap();
        assert_eq!(
            precise.starts_at.unwrap().to_rfc3339(),
            "2026-12-01T00:00:00.123456+00:00"
        );
        assert!(!e.is_running_at(start - chrono::Duration::seconds(1)));
        assert!(e.is_running_at(start));
        assert!(!e.is_running_at(e.ends_at.unwrap()));
        // not started: never running
        let unstarted = Experiment::from_json(&with_arms(TWO_ARMS)).unwrap();
        assert!(!unstarted.is_running_at(start));
        let user = "6f1c2a52-3d4e-4b8f-9a0b-1c2d3e4f5a6b";
        assert_eq!(
            e.arm_of(user).name,
            e.arms[assign("fm-1", user, &[0.5, 0.3, 0.2])].name
        );
    }

    #[test]
    fn each_bad_experiment_is_named_by_its_field() {
        let arm = |name: &str, share: f64| {
            format!(r#"{{"name": "{name}", "share": {share}, "kind": "random"}}"#)
        };
        for (json, message) in [
            (
                with_arms(&format!("[{}, {}]", arm("a", 0.5), arm("b", 0.4))),
                "arms: shares must sum to 1, got 0.9",
            ),
            (
                with_arms(&format!("[{}, {}]", arm("a", 1.5), arm("b", -0.5))),
                "arms[0].share: must be in (0, 1], got 1.5",
            ),
            (
                with_arms(&format!("[{}, {}]", arm("a", 1.0), arm("b", 0.0))),
                "arms[1].share: must be in (0, 1], got 0",
            ),
            (
                with_arms(&format!("[{}]", arm("a", 1.0))),
                "arms: needs at least 2 arms, got 1",
            ),
            (
                with_arms(&format!("[{}, {}]", arm("a", 0.5), arm("a", 0.5))),
                "arms[1].name: \"a\" is the name of arms[0] already",
            ),
            (
                with_arms(&format!("[{}, {}]", arm("", 0.5), arm("b", 0.5))),
                "arms[0].name: must not be empty",
            ),
            (
                with_arms(&format!("[{}, {}]", arm("a:b", 0.5), arm("b", 0.5))),
                "arms[0].name: may hold only letters, digits, '_', '-' and '.', found ':' in \"a:b\"",
            ),
            (
                format!(r#"{{"name": "", "salt": "s", "arms": {TWO_ARMS}}}"#),
                "name: must not be empty",
            ),
            (
                format!(r#"{{"name": "e", "salt": " ", "arms": {TWO_ARMS}}}"#),
                "salt: must not be empty",
            ),
            (
                format!(
                    r#"{{"name": "e", "salt": "s", "starts_at": "2026-12-02T00:00:00Z",
                        "ends_at": "2026-12-01T00:00:00Z", "arms": {TWO_ARMS}}}"#
                ),
                "ends_at: must be after starts_at (2026-12-02T00:00:00+00:00), got 2026-12-01T00:00:00+00:00",
            ),
            (
                with_arms(
                    r#"[{"name": "a", "share": 0.5, "kind": "config", "config": {"top_kk": 3}},
                        {"name": "b", "share": 0.5, "kind": "random"}]"#,
                ),
                "arms[0].config.top_kk: unknown field `top_kk`",
            ),
            (
                with_arms(
                    r#"[{"name": "a", "share": 0.5, "kind": "config", "config": {"weights": {"content": -1}}},
                        {"name": "b", "share": 0.5, "kind": "random"}]"#,
                ),
                "arms[0].config.weights: content weight must be finite and >= 0, got -1",
            ),
            (
                with_arms(
                    r#"[{"name": "a", "share": 0.5, "kind": "sources", "sources": {"fresch": 1}},
                        {"name": "b", "share": 0.5, "kind": "random"}]"#,
                ),
                "arms[0].sources.fresch: unknown field `fresch`",
            ),
            (
                with_arms(
                    r#"[{"name": "a", "share": 0.5, "kind": "sources", "sources": {"fresh": -1}},
                        {"name": "b", "share": 0.5, "kind": "random"}]"#,
                ),
                "arms[0].sources.fresh: must be finite and >= 0, got -1",
            ),
            (
                with_arms(
                    r#"[{"name": "a", "share": 0.5, "kind": "sources", "sources": {}},
                        {"name": "b", "share": 0.5, "kind": "random"}]"#,
                ),
                "arms[0].sources: at least one share must be > 0",
            ),
            (
                with_arms(
                    r#"[{"name": "a", "share": 0.5, "kind": "sources"},
                        {"name": "b", "share": 0.5, "kind": "random"}]"#,
                ),
                "arms[0].sources: required for kind \"sources\" (each source's share)",
            ),
            (
                with_arms(
                    r#"[{"name": "a", "share": 0.5, "kind": "config"},
                        {"name": "b", "share": 0.5, "kind": "random", "config": {}}]"#,
                ),
                "arms[0].config: required for kind \"config\" (a partial ScoringConfig, {} for none)",
            ),
            (
                with_arms(
                    r#"[{"name": "a", "share": 0.5, "kind": "random", "config": {}},
                        {"name": "b", "share": 0.5, "kind": "random"}]"#,
                ),
                "arms[0].config: is only for kind \"config\", this arm is \"random\"",
            ),
        ] {
            let e = err(&json);
            assert!(e.starts_with(message), "{e}\n  expected: {message}");
        }
        assert!(err(&with_arms(
            r#"[{"name": "a", "share": 0.5, "kind": "bandit"}, {"name": "b", "share": 0.5, "kind": "random"}]"#
        ))
        .starts_with("arms[0].kind: unknown variant `bandit`"));
        assert!(err(r#"{"name": "e", "salt": "s", "arms": [], "owner": 1}"#)
            .starts_with("owner: unknown field"));
        let whole = err(r#""x""#);
        assert!(whole.starts_with("experiment: invalid type"), "{whole}");
        assert!(err(r#"{"salt": "s", "arms": []}"#).starts_with("experiment: missing field `name`"));
    }

    #[test]
    fn the_rule_agrees_with_the_shared_test_vector() {
        // the same file is read by the binding's tests (tests/python/test_kernels_experiments.py)
        let doc: Value =
            serde_json::from_str(include_str!("../testdata/experiment_rule.json")).unwrap();
        let mut experiments: Vec<Experiment> = doc["experiments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| Experiment::from_json(&e.to_string()).unwrap())
            .collect();
        let given = experiments.clone();
        sort_for_rule(&mut experiments);
        let order: Vec<&str> = experiments.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(serde_json::json!(order), doc["order"]);
        for case in doc["cases"].as_array().unwrap() {
            let user = case["user"].as_str().unwrap();
            let got = user_arms(&experiments, user);
            let arms: Vec<&str> = got.arms.iter().map(|(_, a)| a.name.as_str()).collect();
            assert_eq!(serde_json::json!(arms), case["arms"], "{user}");
            let applied = got
                .applied_arm()
                .map(|(e, a)| format!("{}:{}", e.name, a.name));
            assert_eq!(serde_json::json!(applied), case["applied"], "{user}");
            // the table form, over the experiments in the order given
            let (table, applied_index) = arm_table(&given, &[user]);
            for (i, e) in given.iter().enumerate() {
                let k = order.iter().position(|n| *n == e.name).unwrap();
                assert_eq!(e.arms[table[i] as usize].name, arms[k], "{user}");
            }
            let named = (applied_index[0] >= 0).then(|| {
                let e = &given[applied_index[0] as usize];
                format!(
                    "{}:{}",
                    e.name, e.arms[table[applied_index[0] as usize] as usize].name
                )
            });
            assert_eq!(serde_json::json!(named), case["applied"], "{user}");
        }
    }

    #[test]
    fn only_an_arm_that_changes_the_feed_applies() {
        let arms = |a: &str, b: &str| {
            Experiment::from_json(&with_arms(&format!(
                r#"[{{"name": "a", "share": 0.5, "kind": "config", "config": {a}}},
                    {{"name": "b", "share": 0.5, "kind": "config", "config": {b}}}]"#
            )))
            .unwrap()
        };
        // a control ({}) changes nothing: nobody has an applied arm
        let controls = arms("{}", "{}");
        assert!(!controls.arms[0].treatment.changes_feed());
        assert_eq!(user_arms([&controls], "u").applied, None);
        // every arm sets something: every user has one, in the first experiment
        let tuned = arms(r#"{"top_k": 5}"#, r#"{"neighbors": 7}"#);
        let got = user_arms([&tuned, &tuned], "u");
        assert_eq!(got.arms.len(), 2);
        assert_eq!(got.applied, Some(0));
        assert!(user_arms(std::iter::empty(), "u").applied_arm().is_none());
        // an unstarted experiment sorts after started ones
        let mut later = controls.clone();
        later.name = "a_first_by_name".into();
        let mut started = tuned.clone();
        started.starts_at = Some("2026-01-01T00:00:00Z".parse().unwrap());
        assert_eq!(rule_order(&started, &later), Ordering::Less);
    }

    #[test]
    fn a_config_arm_sets_only_what_the_pipeline_scores_a_user_with() {
        for field in [
            "lookback_days",
            "interaction_weights",
            "sources",
            "cache_ttl_seconds",
        ] {
            let value = ScoringConfig::default().to_json();
            let value: Value = serde_json::from_str(&value).unwrap();
            let e = err(&with_arms(&format!(
                r#"[{{"name": "a", "share": 0.5, "kind": "config", "config": {{"{field}": {}}}}},
                    {{"name": "b", "share": 0.5, "kind": "random"}}]"#,
                value[field]
            )));
            assert!(
                e.starts_with(&format!(
                    "arms[0].config.{field}: a config arm cannot set {field}"
                )),
                "{e}"
            );
        }
        let all: Map<String, Value> = CONFIG_ARM_FIELDS
            .iter()
            .map(|f| {
                let d: Value = serde_json::from_str(&ScoringConfig::default().to_json()).unwrap();
                (f.to_string(), d[*f].clone())
            })
            .collect();
        let ok = with_arms(&format!(
            r#"[{{"name": "a", "share": 0.5, "kind": "config", "config": {}}},
                {{"name": "b", "share": 0.5, "kind": "random"}}]"#,
            Value::Object(all)
        ));
        Experiment::from_json(&ok).unwrap();
    }

    #[test]
    fn check_shares_names_the_list_and_the_share() {
        let at = |i: usize| format!("shares[{i}]");
        assert!(check_shares("shares", at, &[0.25, 0.75]).is_ok());
        assert!(check_shares("shares", at, &[1.0]).is_ok());
        assert_eq!(
            check_shares("shares", at, &[]).unwrap_err().to_string(),
            "shares: needs at least one share"
        );
        assert_eq!(
            check_shares("shares", at, &[0.5, f64::NAN])
                .unwrap_err()
                .to_string(),
            "shares[1]: must be in (0, 1], got NaN"
        );
        // within the tolerance: thirds
        assert!(check_shares("shares", at, &[1.0 / 3.0; 3]).is_ok());
        assert_eq!(
            assign("s", "u", &[1.0 / 3.0; 3]),
            assign("s", "u", &[1.0 / 3.0; 3])
        );
    }
}

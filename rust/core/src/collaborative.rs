//! The collaborative models that fill the hybrid's collaborative slot, chosen by
//! [`CollaborativeModel`]: each adds one user's score for every post into a [`Lane`].
//!
//! - `user_user` ([`UserUser`]): the sum over the user's `neighbors` most similar users (cosine
//!   on the weighted matrix) of similarity x their interaction value;
//! - `item_item` ([`ItemNeighbors::cosine`]): `x_u · S`, `S` the items' top-`neighbors` cosine
//!   neighbours (or neighbours the caller fitted once, e.g. for batches);
//! - `ridge` ([`ridge_scorer`]): `x_u · S`, `S` the neighbourhood ridge model of
//!   `recommenders.rs`.
//!
//! Adding a model: a variant of [`CollaborativeModel`] (config.rs), a [`CollaborativeScorer`]
//! here and its arm in [`build_scorer`]; its settings are [`ScoringConfig`] fields.

use std::sync::Arc;

use crate::cancel::Cancel;
use crate::config::{CollaborativeModel, InteractionWeighting, ScoringConfig};
use crate::recommenders::{ridge_item_neighbors, RidgeParams};
use crate::similarity::{item_neighbors, Accumulator};
use crate::sparse::Csr;
use crate::{Error, Result};

/// Where a collaborative model writes one user's scores: a dense accumulator over posts that
/// remembers which posts it touched (the block kernel keeps only those), or the list of the
/// `(post, value)` additions in the order they come (the candidate path, which sums them itself
/// after a stable sort by post: the same sums in the same order, without an array over posts).
pub struct Lane<'a> {
    sink: Sink<'a>,
}

enum Sink<'a> {
    Dense(&'a mut Accumulator),
    Pairs(&'a mut Vec<(u32, f32)>),
}

impl<'a> Lane<'a> {
    pub fn new(acc: &'a mut Accumulator) -> Self {
        Lane {
            sink: Sink::Dense(acc),
        }
    }

    /// A lane that appends each addition to `out`, unsummed.
    pub fn pairs(out: &'a mut Vec<(u32, f32)>) -> Self {
        Lane {
            sink: Sink::Pairs(out),
        }
    }

    #[inline(always)]
    pub fn add(&mut self, post: usize, value: f32) {
        match &mut self.sink {
            Sink::Dense(acc) => acc.add(post as u32, value),
            Sink::Pairs(out) => out.push((post as u32, value)),
        }
    }
}

/// A collaborative model: adds a user's score for every post into `out` (zeroed on entry).
pub trait CollaborativeScorer: Send + Sync {
    /// Per-thread scratch for [`CollaborativeScorer::score_into`].
    fn scratch(&self) -> Accumulator;
    fn score_into(&self, user: usize, scratch: &mut Accumulator, out: &mut Lane);
}

/// Builds the model `config.collaborative` from the users x posts `interactions` (the history,
/// whose values score) and `weighted` (the same matrix weighted by `config.weighting`, whose
/// similarities choose the neighbours). `item_neighbors`, an items x items matrix fitted
/// beforehand, replaces the fit of `item_item`.
pub fn build_scorer(
    config: &ScoringConfig,
    interactions: &Arc<Csr<f32>>,
    weighted: &Arc<Csr<f32>>,
    item_neighbors: Option<Csr<f32>>,
    cancel: &Cancel,
) -> Result<Box<dyn CollaborativeScorer>> {
    Ok(match config.collaborative {
        CollaborativeModel::UserUser => {
            Box::new(UserUser::new(interactions, weighted, config.neighbors))
        }
        CollaborativeModel::ItemItem => match item_neighbors {
            Some(s) => Box::new(ItemNeighbors::new(interactions.clone(), s)?),
            None => Box::new(ItemNeighbors::cosine(
                interactions,
                weighted,
                config.neighbors,
                cancel,
            )?),
        },
        CollaborativeModel::Ridge => {
            Box::new(ridge_scorer(interactions, weighted, config, cancel)?)
        }
    })
}

/// The user-user model: cosine neighbours on the weighted matrix, found per user by a sparse
/// accumulator over the users who share a post (exact).
pub struct UserUser {
    x: Arc<Csr<f32>>,
    w: Arc<Csr<f32>>,
    /// The weighted matrix transposed (post x user), each value divided by its user's norm:
    /// the accumulator then sums cosines' numerators already scaled, and the neighbour
    /// candidates' norms are never read at their scattered places.
    wt: Csr<f32>,
    inv_norm: Vec<f32>,
    k: usize,
    /// All weighted values > 0: the branchless accumulator applies (no flag per neighbour
    /// candidate is read or written, which is felt once the users outgrow the caches).
    positive: bool,
}

impl UserUser {
    pub fn new(interactions: &Arc<Csr<f32>>, weighted: &Arc<Csr<f32>>, neighbors: usize) -> Self {
        let inv_norm: Vec<f32> = weighted
            .view()
            .row_norms()
            .into_iter()
            .map(|n| if n > 0.0 { 1.0 / n } else { 0.0 })
            .collect();
        let mut wt = weighted.view().transpose();
        for (v, &o) in wt.data.iter_mut().zip(&wt.indices) {
            *v *= inv_norm[o as usize];
        }
        // (of the values the accumulator adds)
        let positive = wt.view().all_positive();
        UserUser {
            x: interactions.clone(),
            w: weighted.clone(),
            wt,
            inv_norm,
            k: neighbors,
            positive,
        }
    }
}

impl CollaborativeScorer for UserUser {
    fn scratch(&self) -> Accumulator {
        Accumulator::new(self.w.nrows, self.k)
    }

    fn score_into(&self, user: usize, a: &mut Accumulator, out: &mut Lane) {
        let (wt, x) = (self.wt.view(), self.x.view());
        let (posts, vals) = self.w.view().row(user);
        for (&p, &v) in posts.iter().zip(vals) {
            let (users, ws) = wt.row(p as usize);
            a.add_row(users, ws, v, self.positive);
        }
        let ui = self.inv_norm[user];
        a.drain(|topk, o, dot| {
            let s = dot * ui;
            if o as usize != user && s > 0.0 {
                topk.push(o, s);
            }
        });
        let mut nb = std::mem::take(&mut a.sorted);
        a.topk.drain_sorted(&mut nb);
        for e in &nb {
            let (posts, vals) = x.row(e.index as usize);
            for (&p, &v) in posts.iter().zip(vals) {
                out.add(p as usize, e.score * v);
            }
        }
        a.sorted = nb;
    }
}

/// Item-based scoring `x_u · S` over any items x items neighbour matrix `S` (item-item cosine,
/// the ridge model, or neighbours the caller fitted).
pub struct ItemNeighbors {
    x: Arc<Csr<f32>>,
    s: Csr<f32>,
}

impl ItemNeighbors {
    pub fn new(interactions: Arc<Csr<f32>>, s: Csr<f32>) -> Result<Self> {
        let n = interactions.ncols;
        if s.nrows != n || s.ncols != n {
            return Err(Error::invalid(
                "item_neighbors",
                format!(
                    "must be items x items ({n} x {n}), got {} x {}",
                    s.nrows, s.ncols
                ),
            ));
        }
        Ok(ItemNeighbors { x: interactions, s })
    }

    /// Item-item cosine neighbours of the weighted matrix.
    pub fn cosine(
        interactions: &Arc<Csr<f32>>,
        weighted: &Arc<Csr<f32>>,
        neighbors: usize,
        cancel: &Cancel,
    ) -> Result<Self> {
        let s = item_neighbors(
            weighted.view(),
            neighbors,
            InteractionWeighting::None,
            0.0,
            0.0,
            true,
            cancel,
        )?;
        Self::new(interactions.clone(), s)
    }
}

impl CollaborativeScorer for ItemNeighbors {
    fn scratch(&self) -> Accumulator {
        Accumulator::new(0, 1)
    }

    fn score_into(&self, user: usize, _: &mut Accumulator, out: &mut Lane) {
        let s = self.s.view();
        let (items, vals) = self.x.view().row(user);
        for (&i, &v) in items.iter().zip(vals) {
            let (nb, sims) = s.row(i as usize);
            for (&j, &sv) in nb.iter().zip(sims) {
                out.add(j as usize, v * sv);
            }
        }
    }
}

/// The hybrid's `ridge` collaborative model: [`ridge_item_neighbors`] of the weighted matrix
/// (`weighting`; `binary` fits the regression on who-saw-what), scored as `x_u · S` with the
/// user's history values (e.g. recency-weighted). Settings: `neighbors`, `ridge_l2`.
pub fn ridge_scorer(
    interactions: &Arc<Csr<f32>>,
    weighted: &Arc<Csr<f32>>,
    config: &ScoringConfig,
    cancel: &Cancel,
) -> Result<ItemNeighbors> {
    let s = ridge_item_neighbors(
        weighted.view(),
        RidgeParams {
            neighbors: config.neighbors,
            l2: config.ridge_l2,
        },
        cancel,
    )?;
    ItemNeighbors::new(interactions.clone(), s)
}

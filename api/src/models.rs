//! The pipeline's serving models (migration V7's `recommendation_models`) as the request-time
//! sources read them: the run's `ScoringConfig` (the blend shares and the sources' settings) and
//! its fitted TF-IDF (the fresh pool's vocabulary and idf). Models are immutable once written,
//! so a loaded one is kept by id; which model is the newest is asked again every few seconds
//! and whenever a run lands (`feedrank_recommendations_changed`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use feedrank_core::config::ScoringConfig;
use feedrank_core::tfidf::TfidfModel;

use crate::db;
use crate::error::ApiResult;
use crate::memo::TtlCache;

/// How long the answer to "which model is the newest" is trusted.
const LATEST_TTL: Duration = Duration::from_secs(5);
/// Loaded models kept (each holds a vocabulary: a few MB).
const MODELS_CAPACITY: usize = 4;
const MODELS_TTL: Duration = Duration::from_secs(3600);

/// One serving model, parsed.
pub struct ServingModel {
    pub id: i64,
    /// When the pipeline's snapshot was taken (ms): posts created after it are fresh.
    pub snapshot_ms: i64,
    pub config: ScoringConfig,
    pub tfidf: TfidfModel,
}

pub struct Models {
    /// `None`: the model is gone or unreadable (remembered too: models never change once written).
    by_id: TtlCache<i64, Option<Arc<ServingModel>>>,
    /// The newest model's id (`None`: there is none) and when that was asked.
    latest: RwLock<Option<(Instant, u64, Option<i64>)>>,
    /// Bumped when a run lands: the remembered newest model is then asked again.
    generation: AtomicU64,
    default_config: ScoringConfig,
}

impl Default for Models {
    fn default() -> Self {
        Models {
            by_id: TtlCache::new(MODELS_CAPACITY, MODELS_TTL),
            latest: RwLock::new(None),
            generation: AtomicU64::new(0),
            default_config: ScoringConfig::default(),
        }
    }
}

impl Models {
    /// A run landed: the newest model may have changed.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The configuration used when there is no model: the core's defaults.
    pub fn default_config(&self) -> &ScoringConfig {
        &self.default_config
    }

    /// The model `id`, loaded once; `None` when it is gone or unreadable (logged), which the
    /// feed reports as the sources that need it being skipped.
    pub async fn get(&self, pg: &Pool, id: i64) -> ApiResult<Option<Arc<ServingModel>>> {
        if let Some(m) = self.by_id.get(&id) {
            return Ok(m);
        }
        let Some(stored) = db::model(pg, id).await? else {
            self.by_id.insert(id, None);
            return Ok(None);
        };
        let config = match ScoringConfig::from_json(&stored.config) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(model = id, error = %e, "unreadable model config, using the defaults");
                ScoringConfig::default()
            }
        };
        let tfidf = match TfidfModel::from_json(&stored.tfidf) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(model = id, error = %e, "unreadable model TF-IDF; its sources are skipped");
                self.by_id.insert(id, None);
                return Ok(None);
            }
        };
        let model = Arc::new(ServingModel {
            id,
            snapshot_ms: stored.snapshot_ms,
            config,
            tfidf,
        });
        self.by_id.insert(id, Some(model.clone()));
        Ok(Some(model))
    }

    /// The configuration of the newest model (the trending counters' weights and buckets); the
    /// defaults when there is none or PostgreSQL does not answer.
    pub async fn serving_config(&self, pg: &Pool) -> ScoringConfig {
        match self.latest(pg).await {
            Ok(Some(m)) => m.config.clone(),
            _ => self.default_config.clone(),
        }
    }

    /// The newest model a complete run names.
    pub async fn latest(&self, pg: &Pool) -> ApiResult<Option<Arc<ServingModel>>> {
        let generation = self.generation.load(Ordering::SeqCst);
        let known = *self.latest.read().unwrap_or_else(|p| p.into_inner());
        let id = match known {
            Some((at, g, id)) if g == generation && at.elapsed() < LATEST_TTL => id,
            _ => {
                let id = db::latest_model_id(pg).await?;
                *self.latest.write().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), generation, id));
                id
            }
        };
        match id {
            Some(id) => self.get(pg, id).await,
            None => Ok(None),
        }
    }
}

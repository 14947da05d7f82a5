//! Control plane: the single writer of the route table.
//!
//! The data plane reads `Arc<ArcSwap<RouteTable>>` once per request. Every
//! change to routing (a config reload, an admin edit, an analysis verdict)
//! goes through [`Control`], which builds a complete new table off the hot
//! path and publishes it with one atomic store. Later issues add the reload
//! watcher, the admin API and the analysis loop as callers of `Control`.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::routing::{CookieKey, RouteTable};

/// Owner of the published route table.
pub struct Control {
    routes: Arc<ArcSwap<RouteTable>>,
    cookie_key: Arc<CookieKey>,
}

impl Control {
    /// Build the first table from `config`.
    pub fn new(config: &Config, cookie_key: CookieKey) -> Self {
        let cookie_key = Arc::new(cookie_key);
        let table = RouteTable::build(config, Arc::clone(&cookie_key), None);
        Control {
            routes: Arc::new(ArcSwap::from_pointee(table)),
            cookie_key,
        }
    }

    /// The handle the data plane reads from.
    pub fn routes(&self) -> Arc<ArcSwap<RouteTable>> {
        Arc::clone(&self.routes)
    }

    /// Replace the table with one built from `config`, keeping unchanged
    /// pools (and their health state).
    pub fn apply(&self, config: &Config) {
        let current = self.routes.load_full();
        let table = RouteTable::build(config, Arc::clone(&self.cookie_key), Some(&current));
        self.routes.store(Arc::new(table));
    }
}

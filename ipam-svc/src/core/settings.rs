//! Pools, IPAM config and reservations: read together with their revisions (every allocation
//! compares them, so a pool change never races an allocation), and changed by compare-and-swap.

use std::sync::Arc;
use std::time::Duration;

use brindle_backoff::Backoff;
use brindle_datastore::{Revision, Store, StoreError, Txn};
use serde::{Serialize, de::DeserializeOwned};

use super::error::IpamError;
use super::validate;
use ipam_api::keys;
use ipam_api::model::{IpamConfig, Pool, PoolSet, Reservation, ReservationSet, decode, encode};

/// Most compare-and-swap attempts of one settings change.
const SETTINGS_ATTEMPTS: u32 = 20;

/// A settings record and the mod-revision it was read at (0 = absent).
#[derive(Debug, Clone, Default)]
pub struct Versioned<T> {
    /// The record (default when absent).
    pub value: T,
    /// Its mod-revision.
    pub revision: Revision,
}

/// Everything an allocation depends on besides blocks and handles.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// All pools.
    pub pools: Versioned<PoolSet>,
    /// The IPAM config.
    pub config: Versioned<IpamConfig>,
    /// All reservations.
    pub reservations: Versioned<ReservationSet>,
}

impl Settings {
    /// Compares that make a transaction fail if any setting changed since this read.
    pub fn guard(&self, txn: Txn) -> Txn {
        txn.if_mod_revision(keys::POOLS, self.pools.revision)
            .if_mod_revision(keys::CONFIG, self.config.revision)
            .if_mod_revision(keys::RESERVATIONS, self.reservations.revision)
    }

    /// The pool containing `ip`.
    pub fn pool_of(&self, ip: std::net::IpAddr) -> Option<&Pool> {
        self.pools.value.pools.iter().find(|p| p.cidr.contains(&ip))
    }
}

async fn read<T: DeserializeOwned + Default>(
    store: &dyn Store,
    key: &str,
) -> Result<Versioned<T>, IpamError> {
    Ok(match store.get(key).await? {
        Some(kv) => Versioned {
            value: decode(key, &kv.value)?,
            revision: kv.mod_revision,
        },
        None => Versioned::default(),
    })
}

/// Reads pools, config and reservations.
pub async fn load(store: &dyn Store) -> Result<Settings, IpamError> {
    let (pools, config, reservations) = futures_util::future::try_join3(
        read(store, keys::POOLS),
        read(store, keys::CONFIG),
        read(store, keys::RESERVATIONS),
    )
    .await?;
    Ok(Settings {
        pools,
        config,
        reservations,
    })
}

/// Applies `change` to the record at `key` with compare-and-swap, retrying on conflicts; `change`
/// may refuse (its error is returned as is). Returns the new record, `change`'s answer and the
/// revision written.
pub async fn update<T, R>(
    store: &Arc<dyn Store>,
    key: &str,
    mut change: impl FnMut(&mut T) -> Result<R, IpamError>,
) -> Result<(T, R, Revision), IpamError>
where
    T: DeserializeOwned + Serialize + Default,
{
    let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(200));
    for _ in 0..SETTINGS_ATTEMPTS {
        let mut current: Versioned<T> = read(store.as_ref(), key).await?;
        let answer = change(&mut current.value)?;
        let txn = Txn::new()
            .if_mod_revision(key, current.revision)
            .put(key, encode(&current.value));
        match store.txn(txn).await {
            Ok(revision) => return Ok((current.value, answer, revision)),
            Err(StoreError::Conflict { .. }) => tokio::time::sleep(backoff.next_delay()).await,
            Err(other) => return Err(other.into()),
        }
    }
    Err(IpamError::Contention {
        attempts: SETTINGS_ATTEMPTS,
    })
}

/// Adds a pool.
pub async fn create_pool(store: &Arc<dyn Store>, pool: Pool) -> Result<(Pool, Revision), IpamError> {
    let (_, pool, revision) = update(store, keys::POOLS, |set: &mut PoolSet| {
        if set.pools.iter().any(|p| p.name == pool.name) {
            return Err(IpamError::AlreadyExists(format!(
                "pool {:?} already exists",
                pool.name
            )));
        }
        validate::pool(&pool, &set.pools)?;
        set.pools.push(pool.clone());
        set.pools.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pool.clone())
    })
    .await?;
    Ok((pool, revision))
}

/// Changes a pool's mutable fields (disabled, node selector, NAT, encapsulation).
pub async fn update_pool(store: &Arc<dyn Store>, pool: Pool) -> Result<(Pool, Revision), IpamError> {
    let (_, pool, revision) = update(store, keys::POOLS, |set: &mut PoolSet| {
        let others: Vec<Pool> = set
            .pools
            .iter()
            .filter(|p| p.name != pool.name)
            .cloned()
            .collect();
        let existing = set
            .pools
            .iter_mut()
            .find(|p| p.name == pool.name)
            .ok_or_else(|| IpamError::NotFound(format!("pool {:?}", pool.name)))?;
        if existing.cidr != pool.cidr {
            return Err(IpamError::invalid(
                "pool.cidr",
                format!("is immutable (pool has {})", existing.cidr),
            ));
        }
        if existing.block_size != pool.block_size {
            return Err(IpamError::invalid(
                "pool.block_size",
                format!("is immutable (pool has /{})", existing.block_size),
            ));
        }
        if existing.allowed_uses != pool.allowed_uses {
            return Err(IpamError::invalid("pool.allowed_uses", "is immutable"));
        }
        validate::pool(&pool, &others)?;
        *existing = pool.clone();
        Ok(pool.clone())
    })
    .await?;
    Ok((pool, revision))
}

/// Reads one pool.
pub async fn get_pool(store: &dyn Store, name: &str) -> Result<(Pool, Revision), IpamError> {
    let pools: Versioned<PoolSet> = read(store, keys::POOLS).await?;
    let pool = pools
        .value
        .pools
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| IpamError::NotFound(format!("pool {name:?}")))?;
    Ok((pool, pools.revision))
}

/// Reads every pool.
pub async fn list_pools(store: &dyn Store) -> Result<Versioned<PoolSet>, IpamError> {
    read(store, keys::POOLS).await
}

/// Reads the IPAM config (defaults when never set).
pub async fn config(store: &dyn Store) -> Result<IpamConfig, IpamError> {
    Ok(read(store, keys::CONFIG).await?.value)
}

/// Replaces the IPAM config.
pub async fn set_config(store: &Arc<dyn Store>, config: IpamConfig) -> Result<IpamConfig, IpamError> {
    validate::config(&config)?;
    let (value, (), _) = update(store, keys::CONFIG, |current: &mut IpamConfig| {
        *current = config;
        Ok(())
    })
    .await?;
    Ok(value)
}

/// Adds a reservation, or with `replace` also replaces the one of that name.
pub async fn create_reservation(
    store: &Arc<dyn Store>,
    reservation: Reservation,
    replace: bool,
) -> Result<Reservation, IpamError> {
    validate::name("reservation.name", &reservation.name)?;
    if reservation.cidrs.is_empty() {
        return Err(IpamError::invalid(
            "reservation.cidrs",
            "must list at least one CIDR",
        ));
    }
    let (_, reservation, _) = update(store, keys::RESERVATIONS, |set: &mut ReservationSet| {
        if replace {
            set.reservations.retain(|r| r.name != reservation.name);
        } else if set.reservations.iter().any(|r| r.name == reservation.name) {
            return Err(IpamError::AlreadyExists(format!(
                "reservation {:?} already exists",
                reservation.name
            )));
        }
        set.reservations.push(reservation.clone());
        set.reservations.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(reservation.clone())
    })
    .await?;
    Ok(reservation)
}

/// Removes a reservation.
pub async fn delete_reservation(store: &Arc<dyn Store>, name: &str) -> Result<(), IpamError> {
    update(store, keys::RESERVATIONS, |set: &mut ReservationSet| {
        let before = set.reservations.len();
        set.reservations.retain(|r| r.name != name);
        if set.reservations.len() == before {
            return Err(IpamError::NotFound(format!("reservation {name:?}")));
        }
        Ok(())
    })
    .await?;
    Ok(())
}

/// Reads every reservation.
pub async fn reservations(store: &dyn Store) -> Result<ReservationSet, IpamError> {
    Ok(read(store, keys::RESERVATIONS).await?.value)
}

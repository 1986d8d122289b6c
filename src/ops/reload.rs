//! SIGHUP: re-read the configuration file, put its certificate (and the running listeners'
//! `client_ca` files, S2) in force for new sessions and reload the domain list. A configuration or certificate that fails to load is refused and
//! logged, and the running one stays in force. Settings other than `[tls]` and the domain
//! list's contents take effect at the next restart; the log names the sections that changed.

use super::domain_list::DomainListService;
use crate::audit::AuditEvent;
use crate::config::{Config, ConfigError, EMBEDDED_DEFAULT_NAME};
use crate::inbound::SessionContext;
use crate::startup::{self, StartError};
use std::path::Path;

/// Why a configuration reload was refused (the running configuration stays in force).
#[derive(Debug, thiserror::Error)]
pub enum ConfigReloadError {
    /// The file no longer reads or validates.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The certificate or key the new file names does not load.
    #[error(transparent)]
    Tls(#[from] StartError),
}

/// Reloads the configuration for `ctx`'s sessions, then the domain list.
pub fn reload_config(
    ctx: &SessionContext,
    domain_list: &DomainListService,
) -> Result<(), ConfigReloadError> {
    let result = reload_tls(ctx);
    crate::audit::submit(
        &ctx.audit,
        AuditEvent::ConfigReload {
            ok: result.is_ok(),
            error: result.as_ref().err().map(ToString::to_string),
        },
    );
    match &result {
        Ok(()) => {
            let _ = domain_list.reload();
        }
        Err(e) => {
            tracing::error!(error = %e, "reload refused, the running configuration stays in force")
        }
    }
    result
}

/// Reads the file again and installs its certificate; warns about what needs a restart.
fn reload_tls(ctx: &SessionContext) -> Result<(), ConfigReloadError> {
    let current = &ctx.config;
    let new = if current.source == EMBEDDED_DEFAULT_NAME {
        (**current).clone()
    } else {
        Config::load(Path::new(&current.source))?
    };
    // The running listeners' client CA files are read again too (a renewed CA takes effect);
    // a changed `[[listener]]` list waits for the restart, like every other section.
    ctx.set_tls_acceptors(startup::load_tls(&new, &current.listeners)?);
    startup::record_certificate_expiry(&new, &ctx.metrics);
    let changed = crate::config::changed_sections(current, &new);
    if !changed.is_empty() {
        tracing::warn!(sections = %changed.join(","), "the configuration file changed beyond [tls] and the domain list: those changes take effect at the next restart");
    }
    tracing::info!(
        "configuration reloaded: new sessions use the reloaded certificate and client CAs"
    );
    Ok(())
}

//! `riskgate serve`: the Authsignal-compatible HTTP server (feature `server`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use riskgate::server::{App, LogFormat, Secret, ServerSettings};

/// What the command line gave.
pub struct Options {
    /// The rules folder.
    pub rules: PathBuf,
    /// `--listen`, overriding `[server] listen`.
    pub listen: Option<String>,
    /// `--secret-file`; otherwise `RISKGATE_SECRET`.
    pub secret_file: Option<PathBuf>,
    /// `--store URL`: the state store, shared with every other instance on it.
    pub store: Option<String>,
}

/// Loads the rules, then serves them until SIGTERM or SIGINT; SIGHUP reloads them.
pub fn run(opts: &Options) -> ExitCode {
    let secret = match &opts.secret_file {
        Some(p) => Secret::from_file(p),
        None => Secret::from_env(),
    };
    let secret = match secret {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let engine = match riskgate::Engine::builder()
        .rules_dir(&opts.rules)
        .and_then(|b| {
            let file = b.ruleset_store_settings();
            match super::store_from(opts.store.as_deref(), &file) {
                Ok(Some(s)) => Ok(b.store(s)),
                Ok(None) => Ok(b),
                Err(m) => Err(riskgate::LoadError::Store(m)),
            }
        })
        .and_then(riskgate::EngineBuilder::build)
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!(
                "error: rules in `{}` did not load:\n{e}",
                opts.rules.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let mut settings = engine.ruleset().server_settings().clone();
    if let Some(l) = &opts.listen {
        settings.listen.clone_from(l);
    }
    init_logs(&settings);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("riskgate-serve")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let kept = engine.clone();
    let app = App::new(engine, secret);
    let served = runtime.block_on(serve(app, &settings, &opts.rules));
    // With durable state, the shutdown writes everything (in-flight requests have finished).
    if let Err(e) = kept.flush() {
        eprintln!("error: cannot write the state: {e}");
        return ExitCode::FAILURE;
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(settings: &ServerSettings) {
    let level: tracing::Level = settings.log_level.parse().unwrap_or(tracing::Level::INFO);
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match settings.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

async fn serve(app: App, settings: &ServerSettings, rules: &Path) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .map_err(|e| format!("cannot listen on `{}`: {e}", settings.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    let _watcher = if settings.watch {
        match app.watch_rules() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "not watching the rules folder; SIGHUP still reloads");
                None
            }
        }
    } else {
        None
    };
    let mut hup = signal(SignalKind::hangup()).map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    let reloader = app.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let app = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || app.reload_rules()).await;
        }
    });
    tracing::info!(
        listen = %addr,
        rules_dir = %rules.display(),
        rules = app.engine().ruleset().len(),
        "riskgate serve listening"
    );
    // The address on stdout, for scripts that asked for port 0.
    println!("listening on http://{addr}");
    riskgate::server::run(listener, app, settings, async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
    .await
    .map_err(|e| format!("server failed: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

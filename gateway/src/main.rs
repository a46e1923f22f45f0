//! The `fhir-gateway` binary: command line, configuration and logging; everything else is in
//! the library.

use std::process::ExitCode;

use clap::Parser;
use fhir_gateway::auth::dev_issuer::{DevIssuer, TokenRequest};
use fhir_gateway::config::{Cli, Command, Config, KeysCommand, LogFormat, read_file_config};
use fhir_gateway::fhir::Leniency;
use fhir_gateway::server::{Server, shutdown_signal};
use tracing_subscriber::EnvFilter;

/// mimalloc: the write path and the indexer allocate many small strings per resource; measured
/// against glibc malloc in docs/BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("FHIR_GATEWAY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let file_config = match read_file_config(cli.config.as_deref()) {
        Ok(file_config) => file_config,
        Err(error) => {
            eprintln!("fhir-gateway: configuration: {error}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Serve(args) => {
            let config = match Config::resolve(*args, file_config) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("fhir-gateway: configuration: {error}");
                    return ExitCode::from(2);
                }
            };
            init_logging(config.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a Tokio runtime");
            runtime.block_on(async {
                let server = match Server::bind(&config).await {
                    Ok(server) => server,
                    Err(error) => {
                        tracing::error!(%error, "cannot start");
                        return ExitCode::FAILURE;
                    }
                };
                match server.run(shutdown_signal()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => {
                        tracing::error!(%error, "server failed");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Verify(args) => {
            let data_dir = Config::data_dir_for(args, &file_config);
            match fhir_gateway::verify::verify(&data_dir, file_config.ledger.origin.as_deref()) {
                Ok(report) => {
                    print!("{report}");
                    if report.is_clean() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
                }
                Err(error) => {
                    eprintln!("fhir-gateway verify: {error}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Import(args) => {
            init_logging(LogFormat::Text);
            let data_dir = Config::data_dir_for(args.data, &file_config);
            let leniency = if args.lenient { Leniency::Lenient } else { Leniency::Strict };
            match fhir_gateway::import::import(
                &data_dir,
                &args.paths,
                leniency,
                Some(args.organization.as_str()).filter(|organization| !organization.is_empty()),
            ) {
                Ok(summary) => {
                    print!("{summary}");
                    if summary.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
                }
                Err(error) => {
                    eprintln!("fhir-gateway import: {error}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Reindex(args) => {
            init_logging(LogFormat::Text);
            let data_dir = Config::data_dir_for(args, &file_config);
            let reindexed = fhir_gateway::store::reindex(&data_dir).map(|resources| format!("reindexed {resources} resources"));
            report("reindex", reindexed)
        }
        Command::Compact(args) => {
            init_logging(LogFormat::Text);
            let data_dir = Config::data_dir_for(args, &file_config);
            report("compact", fhir_gateway::store::compact(&data_dir).map(|summary| summary.to_string().trim_end().to_string()))
        }
        Command::Token(args) => {
            let data_dir = Config::data_dir_for(args.data, &file_config);
            let issuer = match DevIssuer::load_or_create(&data_dir.join("keys")) {
                Ok(issuer) => issuer,
                Err(error) => {
                    eprintln!("fhir-gateway token: {error}");
                    return ExitCode::from(2);
                }
            };
            let request = TokenRequest {
                audience: args.aud,
                scope: args.scope,
                patient: args.patient,
                fhir_user: args.fhir_user,
                subject: args.sub,
                lifetime_seconds: args.minutes.saturating_mul(60),
                organization: Some(args.organization).filter(|organization| !organization.is_empty()),
                purpose_of_use: fhir_gateway::config::comma_list(&args.purpose),
                roles: fhir_gateway::config::comma_list(&args.role),
                break_glass_reason: args.reason,
            };
            let now = fhir_gateway::fhir::now_instant().unix_timestamp().max(0) as u64;
            println!("{}", issuer.mint(&request, now));
            ExitCode::SUCCESS
        }
        Command::Keys(KeysCommand::Rotate(args)) => {
            let data_dir = Config::data_dir_for(args, &file_config);
            report("keys rotate", fhir_gateway::store::rotate_keys(&data_dir))
        }
    }
}

/// A maintenance command's outcome: what it did on stdout, or why it failed on stderr (exit 1).
fn report(command: &str, outcome: Result<impl std::fmt::Display, impl std::fmt::Display>) -> ExitCode {
    match outcome {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("fhir-gateway {command}: {error}");
            ExitCode::FAILURE
        }
    }
}

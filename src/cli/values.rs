//! Values the command line takes beyond plain types: seconds, and a choice of services.

use std::time::Duration;

use clap::ValueEnum;

use crate::keyspace::Service;

/// A service to run or look at, or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServiceChoice {
    /// Creates posts.
    Posts,
    /// Creates comments and records moderation verdicts.
    Comments,
    /// Approves or rejects comments.
    Moderation,
    /// Keeps the readable view of posts and comments.
    Query,
    /// All four.
    All,
}

/// The services a list of choices names, each once, in the order of [`Service::ALL`].
pub fn chosen(choices: &[ServiceChoice]) -> Vec<Service> {
    let picked = |service| {
        choices.iter().any(|choice| match choice {
            ServiceChoice::Posts => service == Service::Posts,
            ServiceChoice::Comments => service == Service::Comments,
            ServiceChoice::Moderation => service == Service::Moderation,
            ServiceChoice::Query => service == Service::Query,
            ServiceChoice::All => true,
        })
    };
    Service::ALL
        .into_iter()
        .filter(|&service| picked(service))
        .collect()
}

/// Seconds, possibly fractional, as a duration.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(seconds > 0.0 && seconds <= 86_400.0) {
        return Err(format!(
            "{text} seconds: must be more than 0 and at most 86400"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_and_repeats_name_each_service_once() {
        assert_eq!(chosen(&[ServiceChoice::All]), Service::ALL);
        assert_eq!(
            chosen(&[
                ServiceChoice::Query,
                ServiceChoice::Posts,
                ServiceChoice::Query
            ]),
            [Service::Posts, Service::Query]
        );
    }
}

//! The deployment files (Dockerfile, .dockerignore, docker-compose.yml,
//! deploy/) make promises that no test here can run: there is no Docker engine.
//! These tests parse them and check each promise, and that the files agree with
//! each other and with the code: environment variable names, metric names
//! (docs/metrics.md), ports, paths, and the commands the image runs.
//!
//! One test binary, a module per concern: each deployment file with its
//! parser (dockerfile, dockerignore, compose, prometheus, grafana; scale:
//! compose's `scale` profile with its proxy, scrape jobs and dashboard), the two
//! query languages (promql, influxql), the image's commands run for real
//! (image_commands), and the shared readers (files, yaml).

mod compose;
mod dockerfile;
mod dockerignore;
mod files;
mod grafana;
mod image_commands;
mod influxql;
mod prometheus;
mod promql;
mod scale;
mod yaml;

# syntax=docker/dockerfile:1
#
# Herald's image: one stripped release binary on a distroless base.
#
#   docker build -t herald .
#   docker run --rm -p 5000:5000 -v herald-data:/data herald     # the gateway (`herald serve`)
#   docker run --rm -p 3001:3001 herald provider-sim              # the provider simulator
#
# The cache mounts below need BuildKit: the default builder of Docker Engine 23+
# and of Compose v2 (`docker compose`, and `docker-compose` where it is v2).

# ---- build ----------------------------------------------------------------------
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep downloaded crates and compiled dependencies from one
# build to the next, so a change in src/ recompiles only Herald. target/ lives in
# the cache rather than in a layer, so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin herald \
 && cp target/release/herald /usr/local/bin/herald \
 && strip /usr/local/bin/herald
# The one library the runtime base lacks: Rust's std links libgcc_s for unwinding.
RUN mkdir -p /runtime-lib \
 && cp "$(gcc -print-file-name=libgcc_s.so.1)" /runtime-lib/
# sled's directory, made here because the runtime image has no shell. It is
# copied with the runtime user as owner, and a fresh named volume mounted on
# /data starts with that owner, so Herald can write to it without root.
RUN mkdir /data

# ---- runtime --------------------------------------------------------------------
# distroless/base-nossl: glibc, CA certificates and nothing else: no shell, no
# package manager, no OpenSSL (reqwest uses rustls). libgcc_s comes from the
# build stage; LD_LIBRARY_PATH names its directory whatever the architecture.
# Same Debian release as the builder, so the binary finds the glibc it was
# linked against. (distroless/cc would carry libstdc++ and OpenSSL we do not
# use: about 8 MB more.)
FROM gcr.io/distroless/base-nossl-debian12:nonroot
COPY --from=build /runtime-lib /usr/local/lib/herald
COPY --from=build /usr/local/bin/herald /usr/local/bin/herald
COPY --from=build --chown=65532:65532 /data /data
# 65532 is distroless's `nonroot` user.
USER 65532:65532

ENV HERALD_LISTEN=0.0.0.0:5000 \
    HERALD_DATA_DIR=/data \
    LD_LIBRARY_PATH=/usr/local/lib/herald
# `provider-sim` listens on 3001 (SIM_LISTEN); compose publishes it.
EXPOSE 5000
VOLUME ["/data"]

# No curl or wget here: the binary probes itself (its own timeout is 3 s, inside
# Docker's 5 s, so it reports rather than being killed). This probes the gateway; a
# container running `provider-sim` overrides it (see docker-compose.yml).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/herald", "healthcheck", "--url", "http://127.0.0.1:5000/health"]

# Exec form, no shell as PID 1: SIGTERM reaches Herald, which drains in-flight
# provider calls, flushes sled and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/herald"]
CMD ["serve"]

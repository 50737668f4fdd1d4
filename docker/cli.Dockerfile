# A headless GitHub Copilot CLI server, from the npm package @github/copilot.
#   docker build -f docker/cli.Dockerfile -t copilot-cli:1.0.102 .
# Runtime environment: COPILOT_CONNECTION_TOKEN (clients must `connect` with it; sessiongate's
# pool token_env holds the same value) and COPILOT_GITHUB_TOKEN (the CLI's sign-in to Copilot).
# Session state: /home/node/.copilot/session-state (mount a volume there).
FROM node:20-bookworm-slim
ARG COPILOT_VERSION=1.0.102
# tini as PID 1: `copilot` is a Node loader that runs the native CLI as its child, and the CLI
# leaves a child of its own behind on SIGTERM; `tini -g` signals the whole process group and reaps.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && npm install -g "@github/copilot@${COPILOT_VERSION}" \
 && npm cache clean --force \
 && mkdir -p /home/node/.copilot/session-state /home/node/work \
 && chown -R node:node /home/node
USER node
# Sessions record their working directory: keep it a plain, empty folder.
WORKDIR /home/node/work
EXPOSE 4321
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "-g", "--", "copilot"]
# --host 0.0.0.0: the CLI binds 127.0.0.1 unless told otherwise.
CMD ["--headless", "--host", "0.0.0.0", "--port", "4321"]

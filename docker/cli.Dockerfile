# A headless GitHub Copilot CLI server, from the npm package @github/copilot.
#   docker build -f docker/cli.Dockerfile -t copilot-cli:1.0.102 .
# Runtime environment: COPILOT_CONNECTION_TOKEN (clients must `connect` with it; sessiongate's
# pool token_env holds the same value) and COPILOT_GITHUB_TOKEN (the CLI's sign-in to Copilot).
# Session state: /home/node/.copilot/session-state (mount a volume there).
FROM node:20-bookworm-slim
ARG COPILOT_VERSION=1.0.102
RUN npm install -g "@github/copilot@${COPILOT_VERSION}" \
 && npm cache clean --force \
 && mkdir -p /home/node/.copilot/session-state /home/node/work \
 && chown -R node:node /home/node
USER node
# Sessions record their working directory: keep it a plain, empty folder.
WORKDIR /home/node/work
EXPOSE 4321
STOPSIGNAL SIGTERM
ENTRYPOINT ["copilot"]
# --host 0.0.0.0: the CLI binds 127.0.0.1 unless told otherwise.
CMD ["--headless", "--host", "0.0.0.0", "--port", "4321"]

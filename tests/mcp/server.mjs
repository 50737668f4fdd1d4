// A real MCP server for the MCP interop suite: the SDK's Streamable HTTP server transport in
// stateful mode (session ids are random UUIDs issued by this server), one transport + McpServer per
// session as in the SDK's examples, on plain node:http.
//
//   node server.mjs NAME [PORT]      (PORT 0 or absent: any free port)
//
// Prints one line `{"ready":true,"name":NAME,"port":N}` on stdout once listening.
// Routes: POST /mcp (initialize without a session id; anything else with one), GET /mcp (the
// standalone SSE stream), DELETE /mcp (ends the session). Requests naming an unknown session get
// 404 with a JSON-RPC error, as the spec requires for ended sessions. Every response carries
// `X-Mcp-Server: NAME` so the suite can tell which server (or the proxy itself) answered.
//
// Tools:
//   whoami   -> text NAME, structured {server, sessionId}
//   notify   -> returns at once; ~50 ms later sends a notifications/message (logging) that is not
//               tied to a request, so it travels on the session's standalone GET SSE stream
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';

const NAME = process.argv[2] ?? process.env.MCP_SERVER_NAME ?? 'mcp-server';
const PORT = Number(process.argv[3] ?? process.env.MCP_SERVER_PORT ?? 0);

/** sessionId -> { transport, server } */
const sessions = new Map();

function newMcpServer() {
  const server = new McpServer({ name: NAME, version: '1.0.0' }, { capabilities: { logging: {} } });
  server.registerTool('whoami', {
    description: 'The name of the MCP server process that holds this session',
  }, async (extra) => ({
    content: [{ type: 'text', text: NAME }],
    structuredContent: { server: NAME, sessionId: extra.sessionId },
  }));
  server.registerTool('notify', {
    description: 'Sends a logging notification on the standalone SSE stream shortly after returning',
  }, async (extra) => {
    const sid = extra.sessionId;
    setTimeout(() => {
      server.server.sendLoggingMessage({ level: 'info', logger: NAME, data: { server: NAME, sessionId: sid } })
        .catch((e) => console.error(`${NAME}: notify failed: ${e.message}`));
    }, 50);
    return { content: [{ type: 'text', text: 'scheduled' }] };
  });
  return server;
}

function jsonError(res, status, code, message) {
  res.writeHead(status, { 'content-type': 'application/json', 'x-mcp-server': NAME });
  res.end(JSON.stringify({ jsonrpc: '2.0', error: { code, message: `${message} (${NAME})` }, id: null }));
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

const httpServer = http.createServer(async (req, res) => {
  res.setHeader('x-mcp-server', NAME);
  try {
    const url = new URL(req.url, 'http://localhost');
    if (url.pathname !== '/mcp') return jsonError(res, 404, -32601, `no route ${url.pathname}`);
    const sid = req.headers['mcp-session-id'];
    const existing = typeof sid === 'string' ? sessions.get(sid) : undefined;

    if (req.method === 'POST') {
      const text = await readBody(req);
      let body;
      try { body = JSON.parse(text); } catch { return jsonError(res, 400, -32700, 'Parse error'); }
      if (existing) return await existing.transport.handleRequest(req, res, body);
      if (sid) return jsonError(res, 404, -32001, 'Session not found');
      if (!isInitializeRequest(body)) return jsonError(res, 400, -32000, 'Bad Request: no session id and not an initialize request');
      const transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        onsessioninitialized: (id) => { sessions.set(id, { transport, server }); },
      });
      transport.onclose = () => { if (transport.sessionId) sessions.delete(transport.sessionId); };
      const server = newMcpServer();
      await server.connect(transport);
      return await transport.handleRequest(req, res, body);
    }
    if (req.method === 'GET' || req.method === 'DELETE') {
      if (!sid) return jsonError(res, 400, -32000, 'Bad Request: no session id');
      if (!existing) return jsonError(res, 404, -32001, 'Session not found');
      return await existing.transport.handleRequest(req, res);
    }
    res.setHeader('allow', 'GET, POST, DELETE');
    return jsonError(res, 405, -32000, 'Method not allowed');
  } catch (e) {
    console.error(`${NAME}: ${e.stack ?? e}`);
    if (!res.headersSent) jsonError(res, 500, -32603, 'Internal error');
    else res.end();
  }
});

httpServer.listen(PORT, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ ready: true, name: NAME, port: httpServer.address().port })}\n`);
});

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, async () => {
    for (const { transport } of sessions.values()) await transport.close().catch(() => {});
    httpServer.close();
    process.exit(0);
  });
}

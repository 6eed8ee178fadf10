// The peer's own unit (services/bench/peer.py starts it): a bare Node http endpoint that reads a form POST and
// answers a constant JSON body, as the Python unit does with aiohttp.
//
//   node unit.js PORT
import { createServer } from 'node:http';

const body = JSON.stringify({ active: true });

createServer((req, res) => {
  req.on('data', () => {});
  req.on('end', () => {
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  });
}).listen(Number(process.argv[2]), '127.0.0.1', () => {
  process.stdout.write(`listening on ${process.argv[2]}\n`);
});

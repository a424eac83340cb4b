// tardis-dev computeTradeBars on the trades file written by `python -m bench.peers`.
//
// usage: node tardis_bars.mjs NODE_PREFIX TRADES_FILE
//   NODE_PREFIX: the folder `npm install --prefix` installed tardis-dev into (var/peers/node).
//
// Loads every trade into memory as a normalized tardis trade message (Dates built here too),
// then times only: compute(source, ...six computeTradeBars({kind: 'time', interval})) drained by
// one `for await` that counts the emitted trade_bar messages per interval. The source is the
// cheapest async iterator that compute() accepts: a plain object whose next() returns an
// already-resolved promise of the next array element (no async generator of our own).
// Prints one JSON line: {"trades": n, "elapsed_s": s, "trades_per_s": r, "bars": {label: count}}.

import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { resolve } from 'node:path'

const [prefix, file] = process.argv.slice(2)
const require = createRequire(resolve(prefix, 'package.json'))
const { compute, computeTradeBars } = require('tardis-dev')

const INTERVALS = [
  ['1s', 1_000],
  ['1m', 60_000],
  ['5m', 300_000],
  ['15m', 900_000],
  ['1h', 3_600_000],
  ['4h', 14_400_000],
]

function load(path) {
  const raw = readFileSync(path)
  // Copy into a fresh, 8-byte aligned ArrayBuffer so the f64 columns can be viewed in place.
  const data = new Uint8Array(raw.length)
  data.set(raw)
  const view = new DataView(data.buffer)
  const magic = new TextDecoder().decode(data.subarray(0, 8))
  if (magic !== 'TRADES01') throw new Error(`not a trades file: ${magic}`)
  const headerLength = view.getUint32(8, true)
  const header = JSON.parse(new TextDecoder().decode(data.subarray(12, 12 + headerLength)))
  const n = header.n
  let offset = 12 + headerLength
  const column = (Kind, width) => {
    const array = new Kind(data.buffer, offset, n)
    offset += n * width
    return array
  }
  const times = column(Float64Array, 8)
  const prices = column(Float64Array, 8)
  const sizes = column(Float64Array, 8)
  const symbols = column(Uint16Array, 2)
  const buys = column(Uint8Array, 1)
  const ids = data.subarray(offset, offset + 32 * n)
  const decoder = new TextDecoder()
  const trades = new Array(n)
  for (let i = 0; i < n; i++) {
    const timestamp = new Date(times[i])
    trades[i] = {
      type: 'trade',
      symbol: header.symbols[symbols[i]],
      exchange: 'bybit',
      id: decoder.decode(ids.subarray(32 * i, 32 * i + 32)),
      price: prices[i],
      amount: sizes[i],
      side: buys[i] === 1 ? 'buy' : 'sell',
      timestamp,
      localTimestamp: timestamp,
    }
  }
  return trades
}

function source(trades) {
  let i = 0
  const n = trades.length
  const done = Promise.resolve({ value: undefined, done: true })
  return {
    [Symbol.asyncIterator]() {
      return this
    },
    next() {
      return i < n ? Promise.resolve({ value: trades[i++], done: false }) : done
    },
    return() {
      i = n
      return done
    },
  }
}

async function main() {
  const trades = load(file)
  const computables = INTERVALS.map(([name, interval]) => computeTradeBars({ kind: 'time', interval, name }))
  const bars = Object.fromEntries(INTERVALS.map(([name]) => [name, 0]))
  const start = process.hrtime.bigint()
  for await (const message of compute(source(trades), ...computables)) {
    if (message.type === 'trade_bar') bars[message.name] += 1
  }
  const elapsed = Number(process.hrtime.bigint() - start) / 1e9
  const result = { trades: trades.length, elapsed_s: elapsed, trades_per_s: trades.length / elapsed, bars }
  process.stdout.write(JSON.stringify(result) + '\n')
}

await main()

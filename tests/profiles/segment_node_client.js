// Drives @segment/analytics-node, unchanged, against the opsloop given on the command line:
// node segment_node_client.js HOST WRITE_KEY. Prints {"failures": [...]} and exits 1 on any failure.
const { Analytics } = require('@segment/analytics-node')

async function main() {
  const [host, writeKey] = process.argv.slice(2)
  const analytics = new Analytics({ writeKey, host, path: '/ingest/segment/v1/batch', flushAt: 20, maxRetries: 1 })
  const failures = []
  analytics.on('error', (err) => failures.push(String((err && (err.reason || err.message)) || err)))
  analytics.identify({ userId: 'node-1', anonymousId: 'node-anon', traits: { email: 'Node@Example.com', plan: 'pro' } })
  analytics.track({ userId: 'node-1', event: 'Order Completed', properties: { order_id: 'n-1', total: 42.5 } })
  analytics.track({ userId: 'node-1', event: 'Product Viewed', properties: { sku: 'sku-9' }, timestamp: new Date(Date.now() - 60000) })
  analytics.page({ anonymousId: 'node-anon', name: 'Pricing', properties: { url: 'https://shop.example.com/pricing?utm_source=node' } })
  analytics.screen({ userId: 'node-1', name: 'Cart' })
  analytics.group({ userId: 'node-1', groupId: 'acme', traits: { employees: 12 } })
  analytics.alias({ userId: 'node-1', previousId: 'node-guest' })
  await analytics.closeAndFlush({ timeout: 30000 })
  console.log(JSON.stringify({ failures }))
  process.exit(failures.length ? 1 : 0)
}

main().catch((err) => {
  console.error(err)
  process.exit(2)
})

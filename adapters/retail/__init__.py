"""Retail adapters: Shopify and Square webhooks, ARTS POSLog XML and the generic POS JSON."""

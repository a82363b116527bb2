"""The aiohttp API: app and HTTP helpers, the read model shared by the JSON routes and the Grafana
datasource, the routes, what-if, the dashboard page and the OpenAPI document."""

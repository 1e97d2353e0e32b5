"""The operator console at ``/console/``: server-rendered pages on the admin service, with
every asset served by pns itself (no CDN: these machines are offline)."""

"""Hook sites: a typed enum plus an integer layer (defined in :mod:`formats.sites`, re-exported here)."""

from attnlens.formats.sites import Part, Site, SiteKey

__all__ = ["Part", "Site", "SiteKey"]

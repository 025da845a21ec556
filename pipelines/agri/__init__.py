"""Agriculture products: season features, parcels, crop type, yield."""

"""``terrapipe serve``: one local web application over a province's store.

A slippy map of the products (tiles rendered on the fly from the COGs with rio-tiler, in web
mercator), the run history with each run's tile grid coloured by state, and a labelling view that
writes the config's ``agri.labels`` GeoJSON for ``terrapipe season``. The page is plain
HTML/JS/CSS with a vendored Leaflet (``static/``); nothing is fetched from a CDN.
"""

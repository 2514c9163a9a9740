"""Corefiles as clusters ship them (and as people edit them), for the DNS tests.

Each is a plain string, byte for byte; the CRLF, tab and no-trailing-newline variants are
derived from the kubeadm default so the only difference is the one under test.
"""

from __future__ import annotations

KUBEADM = """\
.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30
    loop
    reload
    loadbalance
}
"""

K3S = """\
.:53 {
    errors
    health
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
      pods insecure
      fallthrough in-addr.arpa ip6.arpa
    }
    hosts /etc/coredns/NodeHosts {
      ttl 60
      reload 15s
      fallthrough
    }
    prometheus :9153
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
    loadbalance
    import /etc/coredns/custom/*.override
}
import /etc/coredns/custom/*.server
"""

SEVERAL_BLOCKS = """\
.:53 {
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa
    forward . 8.8.8.8 8.8.4.4
    cache 30
}
example.org:53 example.com:53 {
    forward . 10.0.0.10
}
consul.local:53 {
    errors
    cache 30
    forward . 10.150.0.1
}
"""

COMMENTS = """\
# Cluster DNS. Ask #platform before editing { braces in comments are not blocks }
.:53 {
    errors  # log errors
    # kubernetes comes first
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure  # { not a block
    }
    forward . /etc/resolv.conf
    cache 30
}
# trailing comment
"""

UNRELATED_REWRITE = """\
.:53 {
    errors
    rewrite name foo.example.com foo.default.svc.cluster.local
    rewrite stop {
        name regex (.*)\\.my\\.domain {1}.default.svc.cluster.local
        answer name (.*)\\.default\\.svc\\.cluster\\.local {1}.my.domain
    }
    kubernetes cluster.local in-addr.arpa ip6.arpa
    forward . /etc/resolv.conf
    cache 30
}
"""

OTHER_PORT = """\
.:5353 {
    errors
    kubernetes cluster.local
    forward . /etc/resolv.conf
}
"""

NO_PORT = """\
. {
    errors
    kubernetes cluster.local
    forward . /etc/resolv.conf
}
"""

SCHEME_AND_SNIPPET = """\
(common) {
    errors
    cache 30
}
dns://.:53 {
    import common
    kubernetes cluster.local
    forward . /etc/resolv.conf
}
"""

# A Traefik Mesh (Maesh) block left behind by a migration: not ours, another zone; kept.
TRAEFIK_MESH_LEFTOVER = (
    KUBEADM
    + """\
#### Begin Maesh Block
maesh:53 {
    errors
    rewrite continue {
        name regex (.*)\\.(.*)\\.maesh maesh-{1}-6d61657368-{2}.maesh.svc.cluster.local
        answer name maesh-(.*)-6d61657368-(.*)\\.maesh\\.svc\\.cluster\\.local {1}.{2}.maesh
    }
    kubernetes cluster.local
    forward . /etc/resolv.conf
    cache 30
}
#### End Maesh Block
"""
)

CRLF = KUBEADM.replace("\n", "\r\n")
NO_TRAILING_NEWLINE = KUBEADM.rstrip("\n")
TABS = KUBEADM.replace("       ", "\t\t").replace("    ", "\t")
CRLF_NO_TRAILING_NEWLINE = CRLF.rstrip("\r\n")
EMPTY = ""

SHAPES = {
    "kubeadm": KUBEADM,
    "k3s": K3S,
    "several-blocks": SEVERAL_BLOCKS,
    "comments": COMMENTS,
    "unrelated-rewrite": UNRELATED_REWRITE,
    "other-port": OTHER_PORT,
    "no-port": NO_PORT,
    "scheme-and-snippet": SCHEME_AND_SNIPPET,
    "traefik-mesh-leftover": TRAEFIK_MESH_LEFTOVER,
    "crlf": CRLF,
    "no-trailing-newline": NO_TRAILING_NEWLINE,
    "crlf-no-trailing-newline": CRLF_NO_TRAILING_NEWLINE,
    "tabs": TABS,
    "empty": EMPTY,
}

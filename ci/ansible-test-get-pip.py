"""Stands in for the pip bootstrap script that `ansible-test` downloads from
ci-files.testing.ansible.com, which these machines cannot reach (ansible-test
says to save it by hand in ~/.ansible/test/cache/). It installs the same
thing from PyPI: pip, from the Python's own ensurepip, then `pip install` of
what ansible-test asks for. ci/test copies it into place."""

import ensurepip
import subprocess
import sys

# Options of get-pip.py itself, not of pip install.
OWN = {'--no-setuptools', '--no-wheel'}

ensurepip.bootstrap(upgrade=True)
args = [a for a in sys.argv[1:] if a not in OWN]
sys.exit(subprocess.call([sys.executable, '-m', 'pip', 'install'] + args))

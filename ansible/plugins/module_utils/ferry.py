# -*- coding: utf-8 -*-
# Copyright: ferry developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Running the ferry program on the managed host, for the collection's modules.

ferry does the work and says what it did (or, with --dry-run, would do) as
JSON; the modules only translate that into Ansible's results, so a module
never guesses a change that ferry would not make.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json


def run_ferry(module, args):
    """Runs `ferry ARGS`; returns its parsed JSON, or fails the task with
    ferry's own message and exit status (docs: `ferry --help`, exit statuses
    0 done, 1 failed, 2 usage, 3 refused before anything changed, 4 partly
    done)."""
    binary = module.get_bin_path(module.params.get('ferry') or 'ferry', required=True)
    cmd = [binary] + args
    rc, out, err = module.run_command(cmd)
    if rc != 0:
        module.fail_json(
            msg='ferry exited with status %d: %s' % (rc, (err or out).strip()),
            rc=rc, cmd=cmd, stdout=out, stderr=err)
    try:
        return json.loads(out)
    except ValueError as e:
        module.fail_json(msg='ferry did not answer JSON (%s)' % e, rc=rc, cmd=cmd,
                         stdout=out, stderr=err)


def common_args(params):
    """The options every `ferry channel`/`ferry info` call shares."""
    args = ['--package', params['package']]
    if params.get('family'):
        args += ['--family', params['family']]
    return args


def diffs(changes):
    """Ansible's diff list from ferry's changes (each file, key, lock or
    package, before and after)."""
    return [
        {
            'before_header': '%s (before %s)' % (c['path'], c['action']),
            'after_header': '%s (after %s)' % (c['path'], c['action']),
            'before': c['before'],
            'after': c['after'],
        }
        for c in changes
    ]

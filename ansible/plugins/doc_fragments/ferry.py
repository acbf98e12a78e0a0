# -*- coding: utf-8 -*-
# Copyright: ferry developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """The options every module of the collection shares: which package,
    which package manager, which ferry program."""

    DOCUMENTATION = r'''
options:
  package:
    description:
      - The agent's package name.
    type: str
    default: roboconf-agent
  family:
    description:
      - V(apt) or V(dnf). Detected by ferry; needed only on a host that has both (the role
        M(ferry.fleet.enroll) probes it, in its C(family) tasks) until C(ferry channel enable) has
        recorded it for the package (ferry then takes the family of its record).
    type: str
    choices: [apt, dnf]
  ferry:
    description:
      - The ferry program to run.
    type: str
    default: ferry
'''

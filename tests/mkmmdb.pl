#!/usr/bin/perl
# mkmmdb.pl OUTPUT - writes the small GeoIP database the tests look addresses up in.
#
# database_type "lproc-test", ip_version 6, record_size 24, IPv4 aliased into IPv6
# (::ffff:0:0/96, 2002::/16), reserved networks allowed. Build epoch pinned to 1700000000.
# The networks and what they hold (the tests pin these exact values):
#
#   1.2.3.0/24        FR  France          Paris
#   5.6.0.0/16        DE  Germany         (no city)
#   7.7.7.0/24        (no country; registered_country US United States)
#   9.9.9.0/24        ZZ  (country with an iso_code but no names)
#   11.0.0.0/8        (no country)        "Nul\0City" (a city name with a NUL byte)
#   31.0.0.0/16       CI  "Côte d'Ivoire" Abidjan       (UTF-8)
#   10.1.0.0/16       never inserted: private addresses are unknown
#   2001:db8:1::/48   JP  Japan           Tokyo
#   2a00:1450::/32    GB  United Kingdom  London
use strict;
use warnings;
use MaxMind::DB::Writer::Tree;

my $out = shift or die "usage: mkmmdb.pl OUTPUT\n";

my %types = (
    country            => 'map',
    registered_country => 'map',
    city               => 'map',
    names              => 'map',
    iso_code           => 'utf8_string',
    en                 => 'utf8_string',
);

my $tree = MaxMind::DB::Writer::Tree->new(
    ip_version               => 6,
    record_size              => 24,
    database_type            => 'lproc-test',
    languages                => ['en'],
    description              => { en => 'lproc test database' },
    map_key_type_callback    => sub { $types{ $_[0] } },
    alias_ipv6_to_ipv4       => 1,
    remove_reserved_networks => 0,
);

sub place {
    my ($cc, $name, $city) = @_;
    my %r;
    if (defined $cc) {
        $r{country} = { iso_code => $cc };
        $r{country}{names} = { en => $name } if defined $name;
    }
    $r{city} = { names => { en => $city } } if defined $city;
    return \%r;
}

my @networks = (
    [ '1.2.3.0/24',      place('FR', 'France',  'Paris') ],
    [ '5.6.0.0/16',      place('DE', 'Germany') ],
    [ '7.7.7.0/24',      { registered_country => { iso_code => 'US',
                                                    names => { en => 'United States' } } } ],
    [ '9.9.9.0/24',      place('ZZ') ],
    [ '11.0.0.0/8',      place(undef, undef, "Nul\0City") ],
    [ '31.0.0.0/16',     place('CI', "C\x{f4}te d'Ivoire", 'Abidjan') ],
    [ '2001:db8:1::/48', place('JP', 'Japan',   'Tokyo') ],
    [ '2a00:1450::/32',  place('GB', 'United Kingdom', 'London') ],
);
$tree->insert_network(@$_) for @networks;
$tree->_set_build_epoch(1700000000) if $tree->can("_set_build_epoch");

open my $fh, '>:raw', "$out.tmp" or die "mkmmdb.pl: $out.tmp: $!\n";
$tree->write_tree($fh);
close $fh or die "mkmmdb.pl: $out.tmp: $!\n";
rename "$out.tmp", $out or die "mkmmdb.pl: $out: $!\n";

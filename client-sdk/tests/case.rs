//! The case directory reader: defaults field by field, levels, roles, refusals naming the key.

use std::path::Path;

use kyphoplan_client::case::{read_case, write_case};
use kyphoplan_planner::anatomy::{Level, Role, Side};
use kyphoplan_planner::math::Pose;
use kyphoplan_planner::request::{Instrument, Safety};
use kyphoplan_planner::synth;

/// A case with L4 and its written case.toml text.
fn case(dir: &Path) -> String {
    let (anatomy, _) = synth::spine(&[Level::L4], &Pose::identity(), false);
    write_case(dir, &anatomy, None).unwrap();
    std::fs::read_to_string(dir.join("case.toml")).unwrap()
}

fn with_toml(dir: &Path, text: &str) -> Result<kyphoplan_client::case::Case, String> {
    std::fs::write(dir.join("case.toml"), text).unwrap();
    read_case(dir).map_err(|e| e.to_string())
}

#[test]
fn missing_parameters_take_the_contract_defaults_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let text = case(dir.path());
    let c = with_toml(
        dir.path(),
        &format!(
            "levels = [\"l4\"]\n{text}\n[instrument]\ncannula_outer_diameter_mm = 2.9\nballoon_lengths_mm = [15]\n\n[safety]\ncanal_margin_mm = 3\n"
        ),
    )
    .unwrap();
    assert_eq!(c.request.levels(), Some(&[Level::L4][..]));
    let d = Instrument::contract_default();
    let i = c.request.instrument();
    assert_eq!(i.cannula_outer_diameter_mm, 2.9);
    assert_eq!(i.balloon_lengths_mm, vec![15.0]);
    assert_eq!(i.cannula_working_length_mm, d.cannula_working_length_mm);
    assert_eq!(i.balloon_max_diameter_mm, d.balloon_max_diameter_mm);
    let s = c.request.safety();
    assert_eq!(s.canal_margin_mm, 3.0);
    assert_eq!(
        s.cortex_margin_mm,
        Safety::contract_default().cortex_margin_mm
    );
    assert_eq!(
        s.nerve_root_margin_mm,
        Safety::contract_default().nerve_root_margin_mm
    );
    assert_eq!(c.anatomy.structures[0].name, "L4.stl");
    assert_eq!(
        c.anatomy.structures[0].role,
        Role::Vertebra { level: Level::L4 }
    );

    // No [instrument] / [safety] at all: every default.
    let c = with_toml(dir.path(), &text).unwrap();
    assert_eq!(c.request.levels(), None);
    assert_eq!(c.request.instrument(), &Instrument::contract_default());
    assert_eq!(c.request.safety(), &Safety::contract_default());
}

#[test]
fn roles_levels_and_sides_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let text = case(dir.path());
    let root = format!(
        "{text}\n[[structure]]\nrole = \"nerve_root\"\nlevel = \"L4\"\nside = \"left\"\nmesh = \"L4.stl\"\n"
    );
    let c = with_toml(dir.path(), &root).unwrap();
    assert_eq!(
        c.anatomy.structures[1].role,
        Role::NerveRoot {
            level: Level::L4,
            side: Side::Left
        }
    );
    for (bad, expect) in [
        (
            text.replace("role = \"vertebra\"", "role = \"bone\""),
            "structure[0].role",
        ),
        (
            text.replace("level = \"L4\"", "level = \"L9\""),
            "structure[0].level",
        ),
        (
            text.replace("level = \"L4\"", "level = \"L4\"\nside = \"left\""),
            "structure[0].side",
        ),
        (root.replace("side = \"left\"\n", ""), "structure[1].side"),
        (
            format!("{text}\n[[structure]]\nrole = \"skin\"\nlevel = \"L4\"\nmesh = \"L4.stl\"\n"),
            "structure[1].level",
        ),
        (format!("levels = [\"L4\", \"X\"]\n{text}"), "levels[1]"),
        (text.replace("name = ", "nom = "), "nom"),
        (
            format!("{text}\n[instrument]\ncannula_diameter_mm = 3\n"),
            "cannula_diameter_mm",
        ),
        (
            format!("{text}\n[instrument]\nballoon_lengths_mm = []\n"),
            "instrument.balloon_lengths_mm",
        ),
        (
            text.replace("mesh = \"L4.stl\"", "mesh = \"L5.stl\""),
            "structure[0].mesh",
        ),
    ] {
        let e = with_toml(dir.path(), &bad).expect_err(expect);
        assert!(e.contains(expect), "expected '{expect}' in: {e}");
        assert!(e.contains("case.toml"), "{e}");
    }
}

#[test]
fn case_toml_is_resolved_without_files_and_escapes_are_refused_lexically() {
    use kyphoplan_client::case::{parse_case_toml, resolve_case_toml};
    let resolve = |mesh: &str| {
        let text = format!(
            "name = \"x\"\nframe = \"LPS\"\n[[structure]]\nrole = \"vertebra\"\nlevel = \"L3\"\nmesh = {mesh:?}\n"
        );
        resolve_case_toml(parse_case_toml(&text).unwrap())
    };
    for ok in ["L3.stl", "meshes/L3.stl", "./a/../L3.stl"] {
        let spec = resolve(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert_eq!(spec.structures[0].mesh, ok);
        assert_eq!(spec.structures[0].role, Role::Vertebra { level: Level::L3 });
    }
    for (bad, why) in [
        ("../L3.stl", "leads outside the case directory"),
        ("a/../../L3.stl", "leads outside the case directory"),
        ("/etc/passwd", "must be relative"),
        ("", "empty path"),
    ] {
        let e = resolve(bad).unwrap_err();
        assert!(
            e.starts_with("structure[0].mesh") && e.contains(why),
            "{bad}: {e}"
        );
    }
}

/// Issue 13: the navigation error a plan must tolerate, from `[safety]`; a bad value is refused
/// naming the field.
#[test]
fn navigation_error_is_read_from_safety_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let text = case(dir.path());
    let c = with_toml(
        dir.path(),
        &format!("{text}\n[safety]\nnavigation_error_mm = 1.5\nnavigation_error_deg = 2\n"),
    )
    .unwrap();
    let s = c.request.safety();
    assert_eq!(s.navigation_error_mm, Some(1.5));
    assert_eq!(s.navigation_error_deg, Some(2.0));
    assert_eq!(s.navigation_error(), Some((1.5, 2.0)));
    let c = with_toml(
        dir.path(),
        &format!("{text}\n[safety]\nnavigation_error_deg = 1\n"),
    )
    .unwrap();
    assert_eq!(c.request.safety().navigation_error(), Some((0.0, 1.0)));
    let e = with_toml(
        dir.path(),
        &format!("{text}\n[safety]\nnavigation_error_mm = -2\n"),
    )
    .unwrap_err();
    assert!(e.contains("safety.navigation_error_mm"), "{e}");
}

/// Issue 15's roles: a thoracic case with ribs and pleura is written (`write_case`) and read back
/// with the same names, roles, levels and sides; a rib needs its level and side, a pleura has
/// neither, and the refusals name the field.
#[test]
fn rib_and_pleura_roles_round_trip_through_case_toml() {
    let dir = tempfile::tempdir().unwrap();
    let options = synth::SpineOptions {
        with_soft_tissue: false,
        with_ribs_and_pleura: true,
    };
    let (anatomy, _) = synth::spine_with(&[Level::T6], &Pose::identity(), &options);
    assert!(anatomy
        .structures
        .iter()
        .any(|s| matches!(s.role, Role::Rib { .. })));
    write_case(dir.path(), &anatomy, None).unwrap();
    let text = std::fs::read_to_string(dir.path().join("case.toml")).unwrap();
    assert!(
        text.contains("role = \"rib\"") && text.contains("role = \"pleura\""),
        "{text}"
    );
    let c = read_case(dir.path()).unwrap();
    let roles = |a: &kyphoplan_planner::AnatomyInput| -> Vec<Role> {
        a.structures.iter().map(|s| s.role).collect()
    };
    assert_eq!(roles(&c.anatomy), roles(&anatomy));
    assert_eq!(
        c.anatomy.structures[1].role,
        Role::Rib {
            level: Level::T6,
            side: Side::Left
        }
    );
    let rib =
        "[[structure]]\nrole = \"rib\"\nlevel = \"T6\"\nside = \"right\"\nmesh = \"T6.stl\"\n";
    let pleura = "[[structure]]\nrole = \"pleura\"\nmesh = \"T6.stl\"\n";
    let head = "name = \"x\"\nframe = \"LPS\"\n[[structure]]\nrole = \"vertebra\"\nlevel = \"T6\"\nmesh = \"T6.stl\"\n";
    let c = with_toml(dir.path(), &format!("{head}{rib}{pleura}")).unwrap();
    assert_eq!(
        roles(&c.anatomy)[1..],
        [
            Role::Rib {
                level: Level::T6,
                side: Side::Right
            },
            Role::Pleura
        ]
    );
    for (bad, expect) in [
        (rib.replace("side = \"right\"\n", ""), "structure[1].side"),
        (rib.replace("level = \"T6\"\n", ""), "structure[1].level"),
        (
            pleura.replace(
                "role = \"pleura\"\n",
                "role = \"pleura\"\nside = \"left\"\n",
            ),
            "structure[1].side",
        ),
        (
            pleura.replace("role = \"pleura\"\n", "role = \"pleura\"\nlevel = \"T6\"\n"),
            "structure[1].level",
        ),
    ] {
        let e = with_toml(dir.path(), &format!("{head}{bad}")).expect_err(expect);
        assert!(e.contains(expect), "expected '{expect}' in: {e}");
    }
}
